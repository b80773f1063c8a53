"""Shared pieces of the update that algorithms import (specs/algorithms.md §0): group statistics,
the per-edge clipped surrogate, the KL to the reference, and exact micro-batching of path-level
losses."""

from __future__ import annotations

import torch

ADV_CLIP = 5.0


def group_zscore(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-4,
                 global_std: bool = False) -> torch.Tensor:
    """(R − mean_g) / (std_g + eps) per group, population std (Flow-GRPO, §0 "Group statistics").

    Args:
        rewards: float [N].
        groups: long [N] group (prompt) index of each reward.
        global_std: divide by the std over all N rewards instead of the group's.

    Returns:
        float [N] advantages.
    """
    rewards = rewards.double()
    out = torch.empty_like(rewards)
    std_all = rewards.std(unbiased=False)
    for g in groups.unique():
        m = groups == g
        r = rewards[m]
        out[m] = (r - r.mean()) / ((std_all if global_std else r.std(unbiased=False)) + eps)
    return out.float()


def weighted_group_zscore(scores: dict[str, torch.Tensor], weights: dict[str, float],
                          groups: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k·zscore_group(R_k): per-reward group z-scores, weighted and summed (specs/algorithms.md
    §0 "Multi-reward": MixGRPO, TreeGRPO, TMPO's ``advantage_aggr``), float [N].

    Args:
        scores: {key: float [N]} sub-scores; weights: {key: weight} (zero weights are skipped);
        groups: long [N] group index.
    """
    out = torch.zeros(groups.shape[0], dtype=torch.float32)
    for key, w in weights.items():
        if w:
            out += w * group_zscore(scores[key], groups)
    return out


def clipped_surrogate_per_edge(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                               clip_range: float, adv_clip: float = ADV_CLIP) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-edge PPO clipped surrogate (§0): r = exp(logπ_θ − logπ_old),
    ℓ_e = max(−Â·r, −Â·clip(r, 1 − ε, 1 + ε)), Â clipped to ±``adv_clip``.

    Args:
        log_prob: float [E] with grad; old_log_prob, advantages: float [E].

    Returns:
        (ℓ float [E], {"clip_frac", "approx_kl", "ratio_mean"}).
    """
    adv = advantages.clamp(-adv_clip, adv_clip)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    per_edge = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))
    with torch.no_grad():
        stats = {"clip_frac": float(((ratio - 1).abs() > clip_range).float().mean()),
                 "approx_kl": float(0.5 * (log_ratio**2).mean()), "ratio_mean": float(ratio.mean())}
    return per_edge, stats


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float, adv_clip: float = ADV_CLIP) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over edges of :func:`clipped_surrogate_per_edge`: (loss scalar, stats)."""
    per_edge, stats = clipped_surrogate_per_edge(log_prob, old_log_prob, advantages, clip_range, adv_clip)
    return per_edge.mean(), stats


def flow_sde_kl(mean: torch.Tensor, ref_mean: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                eta: float) -> torch.Tensor:
    """Flow-GRPO's KL to the reference per edge (§0): mean_d((μ_θ − μ_ref)²) / (2a²) with
    a = η·√(σ/(1 − σ)) (σ = 1: σ' in the denominator) — |Δ| times the true Gaussian KL.

    Args:
        mean, ref_mean: float [E, ...]; sigma, sigma_next: float [E].

    Returns:
        float [E].
    """
    s = sigma.to(mean.dtype)
    denom = torch.where(s >= 1, 1 - sigma_next.to(mean.dtype), 1 - s)
    a2 = (eta**2) * s / denom
    return ((mean - ref_mean) ** 2).reshape(mean.shape[0], -1).mean(1) / (2 * a2)


def path_edge_weights(incidence: torch.Tensor, dloss_dpath: torch.Tensor) -> torch.Tensor:
    """Exact micro-batching of a path-level loss (§0 "Training loop"): with every path's
    d(loss)/d(path log-prob) computed first, the edge weights w_e = Σ_l M[l, e]·d(loss)/d(path_l)
    make Σ_e w_e·logπ_e have the same gradient as the path-level loss, edge batch by edge batch.

    Args:
        incidence: float [L, E]; dloss_dpath: float [L].

    Returns:
        float [E].
    """
    return incidence.t() @ dloss_dpath.to(incidence.dtype)
