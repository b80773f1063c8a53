"""Measure the world's scorers on freshly rendered scenes (``alignbench world validate``).

* Detector: random scenes of 1–4 objects; each drawn object is matched to the detection whose box
  centre lies within 3 px of its own; an object counts as found when that detection has the right
  class and colour and a score above the counting threshold (0.9). Reports the found rate, a
  class confusion matrix (drawn × detected, "missed" when nothing matched) and spurious detections.
  With ``blur`` > 0 each image is first softened by a Gaussian blur of that σ (pixels), which
  measures how the detector copes with the soft edges of decoded or generated images.
* OCR: one random sign per scene; exact = normalised reading equals the target; CPU seconds per
  image measured around EasyOCR alone (model loading excluded).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..rewards.geneval import COUNTING_THRESHOLD
from .detector import ShapesDetector
from .layout import random_scene, scene_for_sign
from .palette import CLASSES
from .prompts import random_text
from .scene import WorldConfig, render


@dataclass
class DetectorReport:
    scenes: int = 0
    objects: int = 0
    found: int = 0
    wrong_color: int = 0
    low_score: int = 0
    spurious: int = 0
    confusion: Counter = field(default_factory=Counter)  # (drawn class, detected class or "missed")
    seconds: float = 0.0

    @property
    def found_rate(self) -> float:
        return self.found / max(self.objects, 1)


def validate_detector(n: int, seed: int, cfg: WorldConfig | None = None,
                      progress: Callable[[], None] | None = None, blur: float = 0.0) -> DetectorReport:
    """Render ``n`` random scenes from RNG streams (seed, i), blur them by σ = ``blur`` pixels when
    > 0, and score the detector on them."""
    from scipy import ndimage

    det = ShapesDetector()
    rep = DetectorReport()
    for i in range(n):
        scene = random_scene(np.random.default_rng([seed, i]), cfg)
        img = render(scene, cfg)
        if blur > 0:
            img = np.clip(ndimage.gaussian_filter(img.astype(np.float64), (blur, blur, 0)).round(), 0, 255).astype(np.uint8)
        t0 = time.perf_counter()
        dets = det(img)
        rep.seconds += time.perf_counter() - t0
        used = set()
        for obj in scene.objects:
            rep.objects += 1
            match = None
            for j, d in enumerate(dets):
                cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
                if j not in used and abs(cx - obj.cx) <= 3 and abs(cy - obj.cy) <= 3:
                    match = j
                    break
            if match is None:
                rep.confusion[(obj.cls, "missed")] += 1
                continue
            used.add(match)
            d = dets[match]
            rep.confusion[(obj.cls, d.cls)] += 1
            if d.color != obj.color:
                rep.wrong_color += 1
            elif d.score <= COUNTING_THRESHOLD:
                rep.low_score += 1
            elif d.cls == obj.cls:
                rep.found += 1
        rep.spurious += len(dets) - len(used)
        rep.scenes += 1
        if progress:
            progress()
    return rep


def confusion_rows(rep: DetectorReport) -> list[list[str]]:
    """Rows [drawn class, count per detected class…, missed] for printing."""
    cols = list(CLASSES) + ["missed"]
    return [[c] + [str(rep.confusion.get((c, d), 0)) for d in cols] for c in CLASSES]


@dataclass
class OcrReport:
    signs: int = 0
    exact: int = 0
    reward_sum: float = 0.0
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)


def validate_ocr(n: int, seed: int, cfg: WorldConfig | None = None,
                 progress: Callable[[], None] | None = None) -> OcrReport:
    """Render ``n`` random signs (RNG streams (seed, i)) and read them with the OCR reward."""
    from ..rewards.ocr import OcrReward, normalize, ocr_reward

    reward = OcrReward()
    reward.read(render(scene_for_sign("WARM", np.random.default_rng(0), cfg), cfg))  # load the model
    reward.seconds, reward.images_read = 0.0, 0
    rep = OcrReport()
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        text = random_text(rng)
        reading, _ = reward.read(render(scene_for_sign(text, rng, cfg), cfg))
        rep.signs += 1
        rep.reward_sum += ocr_reward(reading, text)
        if normalize(reading) == normalize(text):
            rep.exact += 1
        else:
            rep.errors.append((text, reading))
        if progress:
            progress()
    rep.seconds = reward.seconds
    return rep
