"""The :class:`Reward` interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch


def to_uint8_images(images: Any) -> list[np.ndarray]:
    """Normalise a batch of images to a list of uint8 [H, W, 3] arrays.

    Args:
        images: float tensor [N, 3, H, W] in [0, 1]; uint8 tensor [N, 3, H, W]; or a sequence of
            PIL images / uint8 [H, W, 3] arrays.

    Raises:
        ValueError: a tensor that is not 4-D with 3 channels.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        x = images.detach().to("cpu")
        if x.is_floating_point():
            x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return list(x.permute(0, 2, 3, 1).numpy())
    out = []
    for im in images:
        arr = np.asarray(im.convert("RGB") if hasattr(im, "convert") else im)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        out.append(arr)
    return out


class Reward(ABC):
    """A reward model. Subclasses set :attr:`keys` (sub-score names, the first is the default
    training reward) and implement :meth:`score`."""

    keys: ClassVar[tuple[str, ...]] = ()
    #: metadata format the reward needs, for error messages ("geneval", "ocr")
    metadata_format: ClassVar[str] = ""

    @abstractmethod
    def score(self, images: Any, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        """Score a batch.

        Args:
            images: see :func:`to_uint8_images`; N images.
            prompts: N prompt strings.
            metadata: N metadata records (the task's JSON-lines format).

        Returns:
            {key: float32 tensor [N]} for every key in :attr:`keys`.
        """

    def details(self, images: Any, prompts: list[str], metadata: list[dict]) -> list[dict]:
        """Per-image records for reports (scores plus what the reward saw); default: the scores."""
        scores = self.score(images, prompts, metadata)
        return [{k: float(v[i]) for k, v in scores.items()} for i in range(len(prompts))]

    def validate_metadata(self, record: dict, where: str) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~alignbench.errors.MetadataError` naming ``where`` and the field if
        ``record`` is unusable by this reward; default: accept."""


class RandomProjectionReward(Reward):
    """A reward that needs no weights, for benchmarks of the engine: tanh of a fixed random linear
    projection (seed 0) of the image average-pooled to 16×16, in [−1, 1]. Key ``projection``."""

    keys = ("projection",)
    description = "tanh of a fixed random projection of the 16×16-pooled image (no weights; for bench)"

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(3 * 16 * 16, generator=g) / (3 * 16 * 16) ** 0.5

    def score(self, images: Any, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.stack(to_uint8_images(images))).permute(0, 3, 1, 2).float() / 255 - 0.5
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 16).flatten(1)
        return {"projection": torch.tanh(pooled @ self.weight * 4)}


class BrightnessReward(Reward):
    """A dense sanity reward (issue 32's RL ladder): the mean pixel value of the image in [0, 1]
    (uint8 values / 255, averaged over H, W and the 3 channels). Any policy gradient that works
    raises it within tens of iterations; key ``brightness``."""

    keys = ("brightness",)
    description = "mean pixel value in [0, 1] (a dense sanity reward for the RL ladder)"

    def score(self, images: Any, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        x = np.stack(to_uint8_images(images)).astype(np.float32) / 255
        return {"brightness": torch.from_numpy(x.reshape(len(x), -1).mean(1))}
