"""TMPO: Trajectory Matching Policy Optimization (specs/algorithms.md §5).

This file holds TMPO's math as the paper states it; the plugin class (plan, advantage, loss on the
shared engine) is added with the engine.

- Softmax Trajectory Balance advantage: q = softmax(β·R̃), p = softmax(log P_θ(τ)),
  A_i = log q_i − log p_i over the K leaves of one prompt.
- Reward temperature β: linear from β₀ to β₁ over the first ``warmup`` iterations, then constant.
- Dynamic stochastic tree: branch steps drawn from Beta distributions whose means move from an
  early to a late layout as training progresses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Z_CLAMP = 20.0


def softmax_tb_advantage(reward_z: torch.Tensor, path_log_prob: torch.Tensor, beta: float) -> torch.Tensor:
    """Softmax-TB advantage of one prompt's K leaves (§5): A = log softmax(β·R̃) − log softmax(log P).

    Computed in float64 on detached inputs. Identities: Σ q·A = KL(q‖p) ≥ 0, Σ p·A = −KL(p‖q),
    A = 0 iff q = p.

    Args:
        reward_z: float [K] group z-scored reward R̃ (clamped to ±20 here).
        path_log_prob: float [K] log P_θ(τ) = Σ of log π over each leaf's stochastic edges.
        beta: reward temperature β > 0.

    Returns:
        float [K].
    """
    r = reward_z.detach().double().clamp(-Z_CLAMP, Z_CLAMP)
    lp = path_log_prob.detach().double()
    return (torch.log_softmax(beta * r, 0) - torch.log_softmax(lp, 0)).float()


def reward_temperature(iteration: int, beta_start: float = 0.8, beta_end: float = 2.0, warmup: int = 150) -> float:
    """β at ``iteration`` (0-based): linear from ``beta_start`` to ``beta_end`` over ``warmup``
    iterations (150 GenEval/PickScore, 100 OCR), then constant (§5 "Reward temperature")."""
    if warmup <= 0:
        return beta_end
    return beta_start + (beta_end - beta_start) * min(1.0, iteration / warmup)


def branch_steps(progress: float, s_min: int, s_max: int, early: Sequence[float], late: Sequence[float],
                 kappa: float, rng: np.random.Generator) -> list[int]:
    """Branch-point step indices of one iteration (§5 "Dynamic stochastic tree").

    For branch point k: μ_k = early_k + (late_k − early_k)·ρ; m̄ = (μ_k − s_min)/(s_max − s_min) clipped
    to [1e-3, 1 − 1e-3]; ξ ~ Beta(κ·m̄, κ·(1 − m̄)); s_k = round(s_min + ξ·(s_max − s_min)); then
    sorted and pushed apart to a gap of at least 1 within [s_min, s_max].

    Args:
        progress: ρ = n/N in [0, 1].
        s_min, s_max: the allowed range; ``s_max`` must already exclude steps whose kernel std is 0.
        early, late: per branch point, the mean step at ρ = 0 and ρ = 1.
        kappa: Beta concentration κ.

    Raises:
        ValueError: more branch points than steps in [s_min, s_max], or mismatched early/late.
    """
    n = len(early)
    if len(late) != n:
        raise ValueError(f"early and late need the same length, got {len(early)} and {len(late)}")
    if n > s_max - s_min + 1:
        raise ValueError(f"{n} branch points do not fit in steps {s_min}..{s_max}")
    rho = min(max(progress, 0.0), 1.0)
    out = []
    for e, lt in zip(early, late, strict=True):
        mu = e + (lt - e) * rho
        m = min(max((mu - s_min) / (s_max - s_min), 1e-3), 1 - 1e-3) if s_max > s_min else 0.5
        xi = rng.beta(kappa * m, kappa * (1 - m))
        out.append(int(round(s_min + xi * (s_max - s_min))))
    out.sort()
    for i in range(1, n):  # push forward to a gap of 1
        out[i] = max(out[i], out[i - 1] + 1)
    for i in range(n - 1, -1, -1):  # and back inside the range from the top
        out[i] = min(out[i], s_max - (n - 1 - i))
        if i < n - 1:
            out[i] = min(out[i], out[i + 1] - 1)
    return out


def tree_plan(num_steps: int, branch_at: Sequence[int], children: int = 3, eta: float = 0.7,
              kernel: str = "cps", root_threshold: int = 1):
    """The dynamic stochastic tree of one iteration as a :class:`~alignbench.sampling.plan.RolloutPlan`
    (§5): ODE everywhere except the branch steps, where each node draws ``children`` independent
    ``cps`` children (η = 0.7) from the shared parent; only branch edges are trained. A first branch
    point at step ≤ ``root_threshold`` becomes ``children`` independent roots instead of a branch.

    Args:
        num_steps: T training sampling steps.
        branch_at: sorted, distinct 0-based step indices (e.g. from :func:`branch_steps`).

    Raises:
        ValueError: branch steps out of range, unsorted or repeated.
    """
    from alignbench.sampling.plan import RolloutPlan, StepSpec

    steps = list(branch_at)
    if any(s < 0 or s >= num_steps for s in steps) or steps != sorted(set(steps)):
        raise ValueError(f"branch steps must be sorted, distinct and in 0..{num_steps - 1}, got {steps}")
    n_roots = 1
    if steps and steps[0] <= root_threshold:
        n_roots, steps = children, steps[1:]
    spec = [StepSpec("ode") for _ in range(num_steps)]
    for s in steps:
        spec[s] = StepSpec(kernel, eta, children, True)
    return RolloutPlan(n_roots, spec)
