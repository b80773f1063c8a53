"""Scene description and renderer of ShapesWorld (specs/shapes_world.md, section "World").

A :class:`Scene` is a background plus objects and/or signs; :func:`render` draws it into a
``uint8`` array ``[H, W, 3]``. Shapes are drawn at ``supersample``× resolution into per-object
alpha masks and box-filtered down, so edges are anti-aliased like a real image.
"""

from __future__ import annotations

import colorsys
import functools
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, model_validator

from ..config import StrictModel
from .palette import CLASSES, COLORS, PALETTE_RGB, srgb_to_lab
from .prompts import OCR_ALPHABET


class WorldConfig(StrictModel):
    """Parameters of the world's renderer and scene sampler (all sizes in pixels)."""

    image_size: int = Field(64, ge=32, le=512, description="side of the square image")
    size_min: int = Field(10, ge=6, description="smallest object side")
    size_max: int = Field(22, ge=6, description="largest object side")
    gap: int = Field(2, ge=0, le=16, description="minimum empty pixels between two objects")
    margin: int = Field(3, ge=0, le=16, description="minimum empty pixels between an object and the border")
    noise_std_max: float = Field(5.0, ge=0, le=20, description="largest std (0-255 units) of the 'noise' texture")
    min_contrast: float = Field(40.0, ge=10, le=100, description="least CIELAB ΔE between background and any object colour")
    supersample: int = Field(4, ge=1, le=8, description="anti-aliasing factor")
    font_size_min: int = Field(22, ge=6, description="smallest sign font size (22 px: cap height 16 px, two token rows)")
    font_size_max: int = Field(24, ge=6, description="largest sign font size")
    sign_font: Literal["sans-bold", "mono-bold"] = Field(
        "mono-bold", description="sign typeface: DejaVu Sans Bold, or DejaVu Sans Mono Bold (narrower: 0.6 em per "
        "glyph, so three letters of cap height 16 px fit a 64-px image)")

    @model_validator(mode="after")
    def _check_ranges(self) -> WorldConfig:
        if self.size_min > self.size_max:
            raise ValueError(f"size_min ({self.size_min}) must be <= size_max ({self.size_max})")
        if self.size_max > self.image_size // 2:
            raise ValueError(f"size_max ({self.size_max}) must be <= image_size/2 ({self.image_size // 2})")
        if self.font_size_min > self.font_size_max:
            raise ValueError("font_size_min must be <= font_size_max")
        return self


@dataclass
class Background:
    """Background texture. ``kind``: flat, gradient (``color`` → ``color2`` along ``angle`` radians)
    or noise (``color`` plus Gaussian noise of std ``noise_std`` drawn from ``noise_seed``)."""

    kind: Literal["flat", "gradient", "noise"]
    color: tuple[int, int, int]
    color2: tuple[int, int, int] | None = None
    angle: float = 0.0
    noise_std: float = 0.0
    noise_seed: int = 0


@dataclass
class ObjectSpec:
    """One object: ``cls`` in :data:`CLASSES`, ``color`` in :data:`COLORS`, centre (cx, cy) and
    side ``size`` of its bounding square, in pixels (x right, y down)."""

    cls: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the bounding square in pixels."""
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass
class SignSpec:
    """A plain panel centred at (cx, cy) of ``w``×``h`` pixels carrying ``text``."""

    text: str
    cx: float
    cy: float
    w: float
    h: float
    panel_color: tuple[int, int, int]
    text_color: tuple[int, int, int]
    font_size: int
    font: str = "sans-bold"

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.cx - self.w / 2, self.cy - self.h / 2, self.cx + self.w / 2, self.cy + self.h / 2)


@dataclass
class Scene:
    """What to draw: a background, objects and signs."""

    background: Background
    objects: list[ObjectSpec] = field(default_factory=list)
    signs: list[SignSpec] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        bg = dict(d["background"])
        for key in ("color", "color2"):
            if bg.get(key) is not None:
                bg[key] = tuple(bg[key])
        signs = [SignSpec(**{**s, "panel_color": tuple(s["panel_color"]), "text_color": tuple(s["text_color"])})
                 for s in d.get("signs", [])]
        return cls(Background(**bg), [ObjectSpec(**o) for o in d.get("objects", [])], signs)


# ---------------------------------------------------------------------------------------------
# Fonts
# ---------------------------------------------------------------------------------------------
#: sign typefaces (WorldConfig.sign_font) → TrueType files shipped with matplotlib
FONT_FILES: dict[str, str] = {"sans-bold": "DejaVuSans-Bold.ttf", "mono-bold": "DejaVuSansMono-Bold.ttf"}


@functools.cache
def font_path(font: str = "sans-bold") -> str:
    """Path of a sign typeface (:data:`FONT_FILES`) as shipped with matplotlib.

    Raises:
        KeyError: unknown ``font``; FileNotFoundError: a broken matplotlib install.
    """
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", FONT_FILES[font])
    if not os.path.isfile(path):  # pragma: no cover - broken matplotlib install
        raise FileNotFoundError(f"TrueType font not found at {path}")
    return path


@functools.cache
def load_font(size: int, font: str = "sans-bold") -> ImageFont.FreeTypeFont:
    """A sign typeface (default DejaVu Sans Bold) at ``size`` pixels (cached)."""
    return ImageFont.truetype(font_path(font), size)


def text_size(text: str, size: int, font: str = "sans-bold") -> tuple[int, int]:
    """Pixel (width, height) of ``text`` rendered at font ``size`` (ink box)."""
    x0, y0, x1, y1 = load_font(size, font).getbbox(text)
    return x1 - x0, y1 - y0


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def render_background(bg: Background, size: int) -> np.ndarray:
    """Background as float array [size, size, 3] in 0–255 units."""
    c0 = np.array(bg.color, dtype=np.float64)
    if bg.kind == "gradient":
        c1 = np.array(bg.color2 if bg.color2 is not None else bg.color, dtype=np.float64)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
        t = (xs - 0.5) * math.cos(bg.angle) + (ys - 0.5) * math.sin(bg.angle)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        img = c0 + (c1 - c0) * t[..., None]
    else:
        img = np.broadcast_to(c0, (size, size, 3)).copy()
    if bg.kind == "noise" and bg.noise_std > 0:
        img = img + np.random.default_rng(bg.noise_seed).normal(0.0, bg.noise_std, img.shape)
    return img


def object_mask(obj: ObjectSpec, size: int, supersample: int) -> np.ndarray:
    """Coverage of ``obj`` in [0, 1], float array [size, size] (anti-aliased by supersampling)."""
    s = supersample
    big = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(big)
    cx, cy, h = obj.cx * s, obj.cy * s, obj.size * s / 2
    box = [cx - h, cy - h, cx + h - 1, cy + h - 1]
    if obj.cls == "circle":
        draw.ellipse(box, fill=255)
    elif obj.cls == "square":
        draw.rectangle(box, fill=255)
    elif obj.cls in ("triangle", "diamond"):
        # PIL puts pixel i's centre at coordinate i: shift continuous vertices by −½ to stay symmetric
        pts = ([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)] if obj.cls == "triangle"
               else [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)])
        draw.polygon([(x - 0.5, y - 0.5) for x, y in pts], fill=255)
    elif obj.cls == "cross":
        w = h / 3  # arm width = side/3
        draw.rectangle([cx - h, cy - w, cx + h - 1, cy + w - 1], fill=255)
        draw.rectangle([cx - w, cy - h, cx + w - 1, cy + h - 1], fill=255)
    elif obj.cls == "ring":
        draw.ellipse(box, fill=255)
        r = h * 0.5
        draw.ellipse([cx - r, cy - r, cx + r - 1, cy + r - 1], fill=0)
    else:
        raise ValueError(f"unknown object class '{obj.cls}'; allowed: {', '.join(CLASSES)}")
    arr = np.asarray(big, dtype=np.float64) / 255.0
    return arr.reshape(size, s, size, s).mean(axis=(1, 3))


def sign_layers(sign: SignSpec, size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """(panel coverage, text coverage), each float [size, size] in [0, 1]."""
    s = supersample
    panel = Image.new("L", (size * s, size * s), 0)
    x0, y0, x1, y1 = (v * s for v in sign.box)
    ImageDraw.Draw(panel).rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
    text = Image.new("L", (size * s, size * s), 0)
    font = load_font(sign.font_size * s, sign.font)
    ImageDraw.Draw(text).text((sign.cx * s, sign.cy * s), sign.text, font=font, fill=255, anchor="mm")
    down = [np.asarray(im, dtype=np.float64).reshape(size, s, size, s).mean(axis=(1, 3)) / 255.0
            for im in (panel, text)]
    return down[0], down[1]


def letter_layers(sign: SignSpec, size: int, supersample: int) -> np.ndarray:
    """Ink coverage of each character of ``sign.text``, float [len(text), size, size] in [0, 1].

    The string is drawn as :func:`sign_layers` draws it (anchor "mm": origin at the centre of its
    advance width); character i's ink is the ink of the prefix text[:i+1] minus that of text[:i],
    both drawn from the same left origin, so that the layers add up to the string's ink (up to
    anti-aliasing overlaps of neighbouring glyphs)."""
    s = supersample
    font = load_font(sign.font_size * s, sign.font)
    left = sign.cx * s - font.getlength(sign.text) / 2
    prev = np.zeros((size, size))
    out = np.zeros((len(sign.text), size, size))
    for i in range(len(sign.text)):
        im = Image.new("L", (size * s, size * s), 0)
        ImageDraw.Draw(im).text((left, sign.cy * s), sign.text[: i + 1], font=font, fill=255, anchor="lm")
        cur = np.asarray(im, dtype=np.float64).reshape(size, s, size, s).mean(axis=(1, 3)) / 255.0
        out[i] = np.clip(cur - prev, 0, 1)
        prev = cur
    return out


#: Extra channels of :func:`render_with_labels` with ``letters=True``: the ink coverage of each
#: character of :data:`~alignbench.world.prompts.OCR_ALPHABET`, after :data:`LABEL_CHANNELS`.
LETTER_CHANNELS: tuple[str, ...] = tuple(f"letter:{ch}" for ch in OCR_ALPHABET)


#: Channels of :func:`render_with_labels`' label maps: object class coverage (one per class), object
#: colour coverage (one per colour), sign panel and sign ink coverage.
LABEL_CHANNELS: tuple[str, ...] = (*(f"class:{c}" for c in CLASSES), *(f"color:{c}" for c in COLORS),
                                   "sign:panel", "sign:ink")


def render_with_labels(scene: Scene, config: WorldConfig | None = None,
                       grid: int = 16, letters: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``scene`` and return the renderer's exact per-cell labels with it.

    Returns:
        (image, labels): image uint8 [H, W, 3] (identical to :func:`render`); labels float32
        [len(LABEL_CHANNELS), grid, grid], the coverage in [0, 1] of each channel of
        :data:`LABEL_CHANNELS` over each of the grid×grid cells (the VAE latent's cells for
        ``grid`` = H/4), followed with ``letters`` by the :data:`LETTER_CHANNELS` (each sign
        character's own ink, :func:`letter_layers`). Used by pretraining's label losses only.

    Raises:
        ValueError: an object has an unknown class or colour; ``grid`` does not divide H.
    """
    cfg = config or WorldConfig()
    size = cfg.image_size
    if size % grid:
        raise ValueError(f"grid ({grid}) must divide image_size ({size})")
    f = size // grid
    n_base = len(LABEL_CHANNELS)
    n_all = n_base + (len(LETTER_CHANNELS) if letters else 0)
    labels = np.zeros((n_all, size, size), dtype=np.float64)
    img = render_background(scene.background, size)
    n_cls = len(CLASSES)
    for obj in scene.objects:
        if obj.color not in PALETTE_RGB:
            raise ValueError(f"unknown colour '{obj.color}'; allowed: {', '.join(COLORS)}")
        m = object_mask(obj, size, cfg.supersample)
        img = img * (1 - m[..., None]) + np.array(PALETTE_RGB[obj.color], dtype=np.float64) * m[..., None]
        labels[CLASSES.index(obj.cls)] += m
        labels[n_cls + COLORS.index(obj.color)] += m
    for sign in scene.signs:
        pa, ta = sign_layers(sign, size, cfg.supersample)
        img = img * (1 - pa[..., None]) + np.array(sign.panel_color, dtype=np.float64) * pa[..., None]
        img = img * (1 - ta[..., None]) + np.array(sign.text_color, dtype=np.float64) * ta[..., None]
        labels[n_base - 2] += pa
        labels[n_base - 1] += ta
        if letters:
            for ch, layer in zip(sign.text, letter_layers(sign, size, cfg.supersample), strict=True):
                if ch in OCR_ALPHABET:
                    labels[n_base + OCR_ALPHABET.index(ch)] += layer
    cells = labels.reshape(n_all, grid, f, grid, f).mean(axis=(2, 4))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), np.clip(cells, 0, 1).astype(np.float32)


def render(scene: Scene, config: WorldConfig | None = None) -> np.ndarray:
    """Draw ``scene``.

    Returns:
        uint8 array [H, W, 3] with H = W = ``config.image_size``.

    Raises:
        ValueError: an object has an unknown class or colour.
    """
    cfg = config or WorldConfig()
    size = cfg.image_size
    img = render_background(scene.background, size)
    for obj in scene.objects:
        if obj.color not in PALETTE_RGB:
            raise ValueError(f"unknown colour '{obj.color}'; allowed: {', '.join(COLORS)}")
        a = object_mask(obj, size, cfg.supersample)[..., None]
        img = img * (1 - a) + np.array(PALETTE_RGB[obj.color], dtype=np.float64) * a
    for sign in scene.signs:
        pa, ta = sign_layers(sign, size, cfg.supersample)
        img = img * (1 - pa[..., None]) + np.array(sign.panel_color, dtype=np.float64) * pa[..., None]
        img = img * (1 - ta[..., None]) + np.array(sign.text_color, dtype=np.float64) * ta[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Backgrounds that contrast with given colours
# ---------------------------------------------------------------------------------------------
def _random_muted(rng: np.random.Generator) -> tuple[int, int, int]:
    h, s, v = rng.random(), rng.uniform(0.0, 0.55), rng.uniform(0.2, 0.95)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def min_contrast(bg: Background, colors: list[tuple[int, int, int]]) -> float:
    """Least CIELAB ΔE between the background (noise-free, sampled along its gradient) and ``colors``."""
    if not colors:
        return float("inf")
    if bg.kind == "gradient" and bg.color2 is not None:
        t = np.linspace(0, 1, 9)[:, None]
        samples = np.array(bg.color) * (1 - t) + np.array(bg.color2) * t
    else:
        samples = np.array([bg.color], dtype=np.float64)
    lab_bg = srgb_to_lab(samples / 255.0)
    lab_c = srgb_to_lab(np.array(colors, dtype=np.uint8))
    return float(np.linalg.norm(lab_bg[:, None] - lab_c[None], axis=-1).min())


def sample_background(rng: np.random.Generator, colors: list[tuple[int, int, int]], cfg: WorldConfig,
                      extra_margin: float = 0.0) -> Background:
    """A random flat/gradient/noise background whose every point is at least
    ``cfg.min_contrast + extra_margin`` ΔE from each of ``colors`` (rejection sampling).

    Raises:
        RuntimeError: no such background found in 1,000 draws (cannot happen for palette colours).
    """
    for _ in range(1000):
        kind = ("flat", "gradient", "noise")[int(rng.integers(3))]
        c0 = _random_muted(rng)
        bg = Background(kind=kind, color=c0)
        if kind == "gradient":
            c1 = np.clip(np.array(c0) + rng.integers(-60, 61, size=3), 0, 255)
            bg.color2 = tuple(int(v) for v in c1)
            bg.angle = float(rng.uniform(0, 2 * math.pi))
        elif kind == "noise":
            bg.noise_std = float(rng.uniform(0.4, 1.0) * cfg.noise_std_max)
            bg.noise_seed = int(rng.integers(2**31))
        if min_contrast(bg, colors) >= cfg.min_contrast + extra_margin:
            return bg
    raise RuntimeError("no contrasting background found")  # pragma: no cover
