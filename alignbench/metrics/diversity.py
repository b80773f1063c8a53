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


def cosine_diversity(features: torch.Tensor) -> float:
    """Mean over ordered pairs i ≠ j of 1 − cos(e_i, e_j) for the N samples of one prompt
    (specs/rewards_metrics.md "Cosine diversity"); 0 for identical images.

    Args:
        features: float [N, F] image features (:mod:`alignbench.metrics.features`), N ≥ 2.

    Raises:
        ValueError: fewer than 2 samples.
    """
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"cosine diversity needs at least 2 samples per prompt, got {n}")
    f = torch.nn.functional.normalize(features.double(), dim=1, eps=1e-12)
    sim = f @ f.t()
    off = ~torch.eye(n, dtype=torch.bool)
    return float((1.0 - sim[off]).mean())


def vendi_score(features: torch.Tensor) -> float:
    """Vendi score exp(−Σ λ log λ), λ the eigenvalues of K/n with K the cosine-similarity matrix of
    the L2-normalised features (Friedman & Dieng 2023; specs/rewards_metrics.md "Vendi score").
    n identical vectors give 1, n orthogonal ones give n.

    Args:
        features: float [N, F], N ≥ 1.
    """
    n = features.shape[0]
    f = torch.nn.functional.normalize(features.double(), dim=1, eps=1e-12)
    lam = torch.linalg.eigvalsh(f @ f.t() / n).clamp_min(0)
    lam = lam[lam > 1e-12]
    return float(torch.exp(-(lam * torch.log(lam)).sum()))
