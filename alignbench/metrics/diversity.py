"""Diversity of the samples of one prompt (specs/rewards_metrics.md, "Diversity")."""

from __future__ import annotations

import math

import torch

LGMD_FLOOR = 1e-8


def lgmd(latents: torch.Tensor) -> float:
    """Log geometric mean distance of the N samples of one prompt.

    LGMD = mean over pairs i<j of log(max(‖z_i − z_j‖ / √D, 1e-8)), z the flattened final latent in
    model space (before VAE unscaling), D its size. i.i.d. N(0, I) latents give ≈ log √2 ≈ 0.35;
    identical samples give log(1e-8); negative values mean collapse.

    Args:
        latents: float [N, ...] final latents of one prompt, N ≥ 2.

    Returns:
        LGMD (nats).

    Raises:
        ValueError: fewer than 2 samples.
    """
    z = latents.reshape(latents.shape[0], -1).double()
    n, d = z.shape
    if n < 2:
        raise ValueError(f"LGMD needs at least 2 samples per prompt, got {n}")
    dist = torch.cdist(z, z) / math.sqrt(d)
    iu = torch.triu_indices(n, n, offset=1)
    return float(torch.log(dist[iu[0], iu[1]].clamp_min(LGMD_FLOOR)).mean())
