"""Image feature extractors for cosine diversity, Vendi score and GARDO's diversity-aware advantage
(specs/rewards_metrics.md "Diversity", specs/shapes_world.md "Diversity features").

* ``shapes`` (the embedded world): pooled pixels. The image, as floats in [0, 1], is average-pooled
  to 16×16, centred by subtracting 0.5 and flattened (768 values). Background colour, object colour,
  size and placement all move these features. It is deterministic, needs no weights, and
  identical images give identical features.
* ``natural``: DINOv2 ViT-L/14 (``facebook/dinov2-large``), the CLS token of ``last_hidden_state``,
  loaded with ``transformers`` from the Hub or a local directory. ``source="pooled"`` uses the pooled
  pixels instead (no weights: ``alignbench bench`` on the random architectures, whose images carry
  no meaning and whose runs must not need the Hub).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

POOL = 16


def pooled_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The ``shapes`` features: float [N, 3·16·16] from uint8 images [N, H, W, 3] (or float
    [N, 3, H, W] in [0, 1]); H and W must be multiples of 16.

    Raises:
        ValueError: images not 4-D with 3 channels, or a size not divisible by 16.
    """
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, H, W, 3] uint8 or [N, 3, H, W] float, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] != 3 or x.shape[2] % POOL or x.shape[3] % POOL:
        raise ValueError(f"images must have 3 channels and sides divisible by {POOL}, got shape {tuple(x.shape)}")
    pooled = torch.nn.functional.adaptive_avg_pool2d(x.float(), POOL)
    return (pooled - 0.5).flatten(1)


def dinov2_features(source: str = "facebook/dinov2-large", device: str = "cpu") -> Callable[[np.ndarray], torch.Tensor]:
    """The ``natural`` extractor: a function uint8 [N, H, W, 3] → float [N, 1024] (DINOv2 CLS token).

    Raises:
        UserError: the model cannot be loaded (names the source).
    """
    from transformers import AutoImageProcessor, AutoModel

    from ..errors import UserError

    try:
        processor = AutoImageProcessor.from_pretrained(source)
        model = AutoModel.from_pretrained(source).to(device).eval()
    except Exception as exc:  # noqa: BLE001 - one line naming the source
        raise UserError(f"features: cannot load DINOv2 from '{source}' ({type(exc).__name__}); it needs the "
                        "Hugging Face Hub or a local copy") from None

    @torch.no_grad()
    def extract(images: np.ndarray) -> torch.Tensor:
        inputs = processor(images=list(images), return_tensors="pt").to(device)
        return model(**inputs).last_hidden_state[:, 0].float().cpu()

    return extract


def feature_extractor(domain: str, source: str | None = None, device: str = "cpu") -> Callable[[np.ndarray], torch.Tensor]:
    """The feature extractor of a model domain (``shapes`` or ``natural``); ``source`` and ``device``
    choose the natural domain's DINOv2 (default ``facebook/dinov2-large``, CPU); ``source="pooled"``
    gives the pooled pixels in either domain.

    Raises:
        ValueError: unknown domain (lists the known ones).
    """
    if domain == "shapes":
        return pooled_pixels
    if domain == "natural":
        if source == "pooled":
            return pooled_pixels
        return dinov2_features(source or "facebook/dinov2-large", device)
    raise ValueError(f"domain: no feature extractor for '{domain}'; allowed: shapes, natural")


def cosine_distance_matrix(features: torch.Tensor) -> torch.Tensor:
    """1 − cos(e_i, e_j) for every pair, float64 [N, N] (zero diagonal) from features [N, F]."""
    f = torch.nn.functional.normalize(features.double(), dim=1, eps=1e-12)
    d = 1.0 - f @ f.t()
    d.fill_diagonal_(0.0)
    return d.clamp_min(0.0)
