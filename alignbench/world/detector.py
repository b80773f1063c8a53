"""The rule-based ShapesWorld detector (specs/shapes_world.md, "Scorers").

Deterministic pipeline: (1) fit the background as a plane per RGB channel, robustly (border ring
first, then all inlier pixels); (2) foreground = pixels farther than ``fg_threshold`` ΔE (CIELAB)
from the fitted background; (3) 8-connected components, specks below ``min_area`` dropped;
(4) a component whose confident pixels hold two or more palette colours in strength is split by
colour; (5) each part's outline is re-cut at 50% coverage estimated against its own colour, so it
does not depend on contrast; (6) the shape is classified from geometry — fill ratio of its box,
solidity (area over convex-hull area), hole fraction, vertical centroid, aspect ratio, diagonal
fill and four-fold angular moment — under per-class diagonal Gaussian models measured on the
renderer's own drawings, crisp and softened by a Gaussian blur (so that the soft corners of a VAE
reconstruction or a generated image still read as the shape a person sees); the score
is the posterior of the best class, lowered for blobs unlike every class; (7) the colour is the
nearest palette entry to the median CIELAB colour of the component's core pixels.

Output: :class:`~alignbench.rewards.geneval.Detection` records, the input of the GenEval rules.
"""

from __future__ import annotations

import functools

import numpy as np
from pydantic import Field
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..config import StrictModel
from ..rewards.geneval import Detection
from .palette import CLASSES, COLORS, PALETTE_LAB, nearest_color_lab, srgb_to_lab

FEATURES = ("fill", "solidity", "holes", "centroid_y", "log_aspect", "diagonal_fill", "angular_c4")
#: Least spread of each feature in a class model, so that a feature that never varies in the
#: calibration renders (e.g. holes of a circle) does not become infinitely selective.
FEATURE_STD_FLOOR = np.array([0.04, 0.03, 0.02, 0.02, 0.06, 0.1, 0.05])
#: Gaussian blur σ (pixels) of the calibration drawings: crisp, and softened like a VAE reconstruction
#: (the tiny-shapes VAE rounds a diamond's tips enough to raise its box fill from 0.53 to 0.66).
CALIBRATION_BLUR = (0.0, 1.0, 1.5)


class DetectorConfig(StrictModel):
    """Thresholds of the rule-based detector."""

    fg_threshold: float = Field(16.0, gt=0, description="ΔE from the background above which a pixel is foreground")
    min_area: int = Field(14, ge=1, description="components smaller than this (pixels) are specks")
    split_fraction: float = Field(0.2, gt=0, lt=0.5, description="share of core pixels a second colour needs to split a component")
    coverage: float = Field(0.5, gt=0, lt=1, description="object coverage above which a rim pixel belongs to the object")
    outlier_sigma: float = Field(4.0, gt=0, description="class-model distance (in σ) beyond which the score decays")


def fit_background(img: np.ndarray, threshold: float = 30.0, border: int = 2, iterations: int = 3) -> np.ndarray:
    """Robust planar background estimate.

    Args:
        img: float [H, W, 3] in 0–255.
        threshold: RGB distance beyond which a pixel is an outlier of the plane.

    Returns:
        float [H, W, 3]: a + b·x + c·y per channel, fitted by least squares first to the border
        ring of width ``border``, then to all pixels within ``threshold`` of the previous fit.
    """
    h, w, _ = img.shape
    ys, xs = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), xs.ravel() / w, ys.ravel() / h], axis=1)
    flat = img.reshape(-1, 3)
    ring = np.zeros((h, w), bool)
    ring[:border], ring[-border:], ring[:, :border], ring[:, -border:] = True, True, True, True
    inliers = ring.ravel()
    for it in range(iterations + 1):
        coef, *_ = np.linalg.lstsq(design[inliers], flat[inliers], rcond=None)
        fit = design @ coef
        if it == 0:  # the ring may contain object pixels: trim it by its own median colour first
            resid = np.linalg.norm(flat - fit, axis=1)
            inliers = ring.ravel() & (resid < max(threshold, np.median(resid[ring.ravel()]) * 3))
            coef, *_ = np.linalg.lstsq(design[inliers], flat[inliers], rcond=None)
            fit = design @ coef
        resid = np.linalg.norm(flat - fit, axis=1)
        new = resid < threshold
        if new.sum() < 3 or np.array_equal(new, inliers):
            break
        inliers = new
    return fit.reshape(h, w, 3)


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Geometry of one component.

    Args:
        mask: bool [H, W] (one connected component).

    Returns:
        float [7]: fill (area / box area), solidity (area / convex hull area of the pixel squares),
        holes (enclosed background / filled area), centroid_y (vertical centroid within the box,
        0 = top, 1 = bottom), log_aspect (log of box width / height) and diagonal_fill (mean of the
        bilinearly interpolated mask at the four points ±0.2·box from the box centre: 1 inside a
        diamond, circle or square, 0 between a cross's arms, ½ for an upward triangle) and
        angular_c4 = Σ r⁴·cos 4θ / Σ r⁴ over the pixels' offsets (r, θ) from the centroid, the
        four-fold harmonic of the outline: ≈ 0 for a circle or ring, ≈ +0.4 for a diamond and +0.55
        for a cross (mass along the axes), ≈ −0.4 for a square (mass along the diagonals). Unlike
        fill, it survives rounded corners.
    """
    ys, xs = np.nonzero(mask)
    area = float(len(ys))
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bw, bh = float(x1 - x0), float(y1 - y0)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:  # degenerate (a line of pixels)
        hull_area = area
    filled = ndimage.binary_fill_holes(mask[y0:y1, x0:x1]).sum()
    cx, cy = (x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5  # box centre in pixel-index coordinates
    pts = np.array([[cy + sy * 0.2 * bh, cx + sx * 0.2 * bw] for sx in (-1, 1) for sy in (-1, 1)]).T
    diag = ndimage.map_coordinates(mask.astype(np.float64), pts, order=1, mode="constant").mean()
    z4 = ((xs - xs.mean()) + 1j * (ys - ys.mean())) ** 4
    c4 = float(z4.real.sum() / max(np.abs(z4).sum(), 1e-9))
    return np.array([
        area / (bw * bh),
        area / max(hull_area, area),
        (filled - area) / filled,
        (ys.mean() + 0.5 - y0) / bh,
        np.log(bw / bh),
        diag,
        c4,
    ])


def coverage_mask(img: np.ndarray, bg: np.ndarray, region: np.ndarray, color: np.ndarray, level: float) -> np.ndarray:
    """Pixels of ``region`` whose estimated coverage by an object of RGB ``color`` is >= ``level``.

    The renderer (like a camera) mixes object and background linearly, pixel = bg + α·(color − bg),
    so α = ((pixel − bg)·(color − bg)) / ‖color − bg‖². Thresholding α instead of the distance to
    the background makes a shape's outline independent of its contrast.
    """
    diff = color - bg
    alpha = ((img - bg) * diff).sum(-1) / np.maximum((diff**2).sum(-1), 1e-6)
    return region & (alpha >= level)


@functools.cache
def class_models() -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and spread per class and blur level, ([n_classes, n_blur, 7], [n_classes, n_blur, 7]).

    Measured on the renderer's own drawings of each class at every side from 10 to 22 px and
    sub-pixel offsets 0, ¼, ½, ¾, once crisp and once per blur σ of :data:`CALIBRATION_BLUR`
    (computed once per process, deterministic); the spread is floored by :data:`FEATURE_STD_FLOOR`.
    Each class is a mixture of its blur levels, so a crisp drawing is judged against the crisp
    model (tight) and a soft one against the soft models.
    """
    from .scene import Background, ObjectSpec, Scene, render

    grey = np.array([128.0, 128.0, 128.0])
    means, stds = [], []
    for cls in CLASSES:
        feats: list[list[np.ndarray]] = [[] for _ in CALIBRATION_BLUR]
        for size in range(10, 23):
            for ox, oy in ((0, 0), (0.25, 0.5), (0.5, 0.25), (0.75, 0.75)):
                img = render(Scene(Background("flat", (128, 128, 128)),
                                   [ObjectSpec(cls, "black", 32 + ox, 32 + oy, size)])).astype(np.float64)
                region = np.ones(img.shape[:2], bool)
                for b, blur in enumerate(CALIBRATION_BLUR):
                    soft = ndimage.gaussian_filter(img, (blur, blur, 0)) if blur else img
                    mask = coverage_mask(soft, grey, region, np.array([20.0, 20, 20]), 0.5)
                    feats[b].append(shape_features(mask))
        arr = np.array(feats)  # [n_blur, n_drawings, F]
        means.append(arr.mean(1))
        stds.append(np.maximum(arr.std(1), FEATURE_STD_FLOOR))
    return np.array(means), np.array(stds)


def classify_shape(features: np.ndarray, outlier_sigma: float) -> tuple[int, float, np.ndarray]:
    """Class of a feature vector under per-class mixtures of diagonal Gaussians, one component per
    blur level with equal weights (:func:`class_models`).

    Returns:
        (class index, score, standardised distance to each class [n_classes], the least over its
        blur levels). The score is the posterior of the best class, times exp(−(d − outlier_sigma)²/2)
        when its distance d exceeds ``outlier_sigma`` (a blob unlike every class scores low even if
        one class is least unlike).
    """
    mu, sd = class_models()
    z = (features - mu) / sd  # [C, B, F]
    d_cb = np.linalg.norm(z, axis=-1)
    ll_cb = -0.5 * d_cb**2 - np.log(sd).sum(axis=-1)
    top = ll_cb.max()
    ll = np.log(np.exp(ll_cb - top).mean(axis=1)) + top  # log of the equal-weight mixture, [C]
    p = np.exp(ll - ll.max())
    p /= p.sum()
    k = int(ll.argmax())
    d = d_cb.min(axis=1)
    objectness = float(np.exp(-0.5 * max(d[k] - outlier_sigma, 0.0) ** 2))
    return k, float(p[k]) * objectness, d


class ShapesDetector:
    """Rule-based detector for ShapesWorld images.

    Args:
        config: thresholds (:class:`DetectorConfig`).
    """

    def __init__(self, config: DetectorConfig | None = None):
        self.config = config or DetectorConfig()

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """Detect the objects of one image.

        Args:
            image: uint8 [H, W, 3] RGB (or float in [0, 1]).

        Returns:
            Detections sorted by score, descending; boxes in pixels with exclusive x1/y1.
        """
        img = np.asarray(image)
        img = img.astype(np.float64) * (255.0 if not np.issubdtype(img.dtype, np.integer) else 1.0)
        cfg = self.config
        bg = fit_background(img)
        lab = srgb_to_lab(np.clip(img, 0, 255) / 255.0)
        dist = np.linalg.norm(lab - srgb_to_lab(np.clip(bg, 0, 255) / 255.0), axis=-1)
        labels, n = ndimage.label(dist > cfg.fg_threshold, structure=np.ones((3, 3)))
        dets: list[Detection] = []
        for comp in range(1, n + 1):
            mask = labels == comp
            if mask.sum() < cfg.min_area:
                continue
            for part in self._split_by_color(mask, lab, dist):
                det = self._describe(part, img, bg, lab, dist)
                if det is not None:
                    dets.append(det)
        return sorted(dets, key=lambda d: -d.score)

    def _core(self, mask: np.ndarray, dist: np.ndarray) -> np.ndarray:
        """Confident interior pixels: far from the background, not on the anti-aliased rim."""
        core = mask & (dist > 2 * self.config.fg_threshold)
        eroded = ndimage.binary_erosion(core)
        return eroded if eroded.sum() >= 4 else (core if core.sum() >= 4 else mask)

    def _split_by_color(self, mask: np.ndarray, lab: np.ndarray, dist: np.ndarray) -> list[np.ndarray]:
        core = self._core(mask, dist)
        idx, _ = nearest_color_lab(lab[core])
        counts = np.bincount(idx, minlength=len(COLORS))
        major = [c for c in np.argsort(-counts) if counts[c] >= max(6, self.config.split_fraction * core.sum())]
        if len(major) < 2:
            return [mask]
        centres = PALETTE_LAB[major]
        assign = np.linalg.norm(lab[..., None, :] - centres, axis=-1).argmin(-1)
        parts = []
        for j in range(len(major)):
            sub, m = ndimage.label(mask & (assign == j), structure=np.ones((3, 3)))
            parts.extend(sub == k for k in range(1, m + 1) if (sub == k).sum() >= self.config.min_area)
        return parts

    def _describe(self, part: np.ndarray, img: np.ndarray, bg: np.ndarray, lab: np.ndarray,
                  dist: np.ndarray) -> Detection | None:
        core = self._core(part, dist)
        color_rgb = np.median(img[core], axis=0)
        color = COLORS[int(nearest_color_lab(np.median(lab[core], axis=0))[0])]
        region = ndimage.binary_dilation(part) & ~self._claimed(part, dist)
        mask = coverage_mask(img, bg, region, color_rgb, self.config.coverage)
        sub, m = ndimage.label(mask, structure=np.ones((3, 3)))
        if m == 0:
            return None
        mask = sub == (1 + int(np.argmax(ndimage.sum(mask, sub, range(1, m + 1)))))
        if mask.sum() < self.config.min_area:
            return None
        ys, xs = np.nonzero(mask)
        k, score, _ = classify_shape(shape_features(mask), self.config.outlier_sigma)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        return Detection(CLASSES[k], score, box, color, mask)

    def _claimed(self, part: np.ndarray, dist: np.ndarray) -> np.ndarray:
        """Foreground pixels outside ``part`` (another object's), which dilation must not annex."""
        return (dist > self.config.fg_threshold) & ~part
