"""TMPO: Trajectory Matching Policy Optimization (specs/algorithms.md §5).

- Softmax Trajectory Balance advantage: q = softmax(β·R̃), p = softmax(log P_θ(τ)),
  A_i = log q_i − log p_i over the K leaves of one prompt.
- Reward temperature β: linear from β₀ to β₁ over the first ``warmup`` iterations, then constant.
- Dynamic stochastic tree: branch steps drawn from Beta distributions whose means move from an
  early to a late layout as training progresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from alignbench.sampling.kernels import kernel_std
from alignbench.sampling.plan import Rollout, RolloutPlan
from alignbench.training.algorithm import (
    Algorithm,
    AlgorithmConfig,
    PathBatch,
    Progress,
    Rewards,
    register_algorithm,
)
from alignbench.training.objectives import weighted_group_zscore

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


def tree_plan(num_steps: int, branch_at: Sequence[int], children: int | Sequence[int] = 3, eta: float = 0.7,
              kernel: str = "cps", root_threshold: int = 1):
    """The dynamic stochastic tree of one iteration as a :class:`~alignbench.sampling.plan.RolloutPlan`
    (§5): ODE everywhere except the branch steps, where each node draws ``children`` independent
    ``cps`` children (η = 0.7) from the shared parent; only branch edges are trained. A first branch
    point at step ≤ ``root_threshold`` becomes ``children`` independent roots instead of a branch.

    Args:
        num_steps: T training sampling steps.
        branch_at: sorted, distinct 0-based step indices (e.g. from :func:`branch_steps`).
        children: fan-out of every branch point (the paper: 3), or one per branch point in order
            (an alignbench option; e.g. (9, 3): nine children at the first, three at the second).
            Leaves per prompt = the product.

    Raises:
        ValueError: branch steps out of range, unsorted or repeated; a per-point ``children`` whose
            length differs from ``branch_at``'s.
    """
    from alignbench.sampling.plan import RolloutPlan, StepSpec

    steps = list(branch_at)
    if any(s < 0 or s >= num_steps for s in steps) or steps != sorted(set(steps)):
        raise ValueError(f"branch steps must be sorted, distinct and in 0..{num_steps - 1}, got {steps}")
    fan = [children] * len(steps) if isinstance(children, int) else list(children)
    if len(fan) != len(steps):
        raise ValueError(f"children: {len(fan)} fan-outs for {len(steps)} branch points")
    n_roots = 1
    if steps and steps[0] <= root_threshold:
        n_roots, steps, fan = fan[0], steps[1:], fan[1:]
    spec = [StepSpec("ode") for _ in range(num_steps)]
    for s, k in zip(steps, fan, strict=True):
        spec[s] = StepSpec(kernel, eta, k, True)
    return RolloutPlan(n_roots, spec)


class TMPOConfig(AlgorithmConfig):
    """TMPO hyperparameters; defaults are the paper's for FLUX.1-dev (specs/algorithms.md §5)."""

    ratio: Literal["paper", "code"] = Field(
        "paper", description="paper: trajectory ratio with RatioNorm; code: group-centred path log-ratio with "
                             "detached GRPO-Guard 1/|Δ| edge weights (released code)")
    center: bool = Field(False, description="subtract each group's mean Softmax-TB advantage (the trajectory-balance "
                         "residual at its optimal log Z, VarGrad); paper: no centring")
    kernel: Literal["cps", "flow_sde", "dance"] = Field("cps", description="branch kernel (paper: cps)")
    eta: float = Field(0.7, ge=0, le=1, description="branch noise level η (paper: 0.7)")
    children: int | tuple[int, ...] = Field(3, description="children per branch point (paper: 3), or one fan-out "
                                            "per branch point in order, e.g. (9, 3) with two branch points")
    s_min: int = Field(1, ge=0, description="earliest branch step (paper FLUX: 1)")
    s_max: int = Field(5, ge=0, description="latest branch step, clamped to the last step with noise (paper FLUX: 5)")
    early: tuple[float, ...] = Field((1, 2, 3), description="mean branch steps at the start (paper FLUX: 1, 2, 3)")
    late: tuple[float, ...] = Field((1, 3, 5), description="mean branch steps at the end (paper FLUX: 1, 3, 5)")
    kappa: float = Field(6.0, gt=0, description="Beta concentration κ (paper: 6)")
    root_threshold: int = Field(1, ge=-1, description="a first branch point at step <= this becomes independent roots")
    beta_start: float = Field(0.8, gt=0, description="reward temperature β at iteration 0 (paper: 0.8)")
    beta_end: float = Field(2.0, gt=0, description="β after the warm-up (paper: 2.0)")
    beta_warmup: int = Field(150, ge=0, description="iterations of the β ramp (paper: 150; 100 for OCR)")
    lr: float = Field(3e-5, gt=0, description="paper: 3e-5 (5e-5 PickScore)")
    lr_schedule: Literal["constant", "cosine"] = Field("cosine", description="paper: cosine decay to 0.1·lr")
    grad_clip: float = Field(0.5, gt=0, description="paper: 0.5 (0.3 PickScore)")
    inner_updates: int = Field(1, ge=1, description="paper: 1 inner update per iteration")
    clip_range: float = Field(0.2, gt=0, description="paper: ε = 0.2 on the trajectory ratio")
    kl_beta: float = Field(0.0, ge=0, description="reference penalty λ_ref (paper: optional, 0)")
    ema_decay: float = Field(0.9, ge=0, lt=1, description="paper: EMA 0.9")
    ema_every: int = Field(8, ge=1, description="paper: every 8 steps")


@register_algorithm("tmpo")
class TMPO(Algorithm):
    """TMPO: Softmax-TB advantage over the leaves of a dynamic stochastic tree, trajectory-level ratio."""

    description = "TMPO: Softmax Trajectory Balance advantage on a dynamic stochastic tree, trajectory ratio"
    paper = "Trajectory Matching Policy Optimization (TMPO); specs/algorithms.md §5"
    group_size = 27
    Config = TMPOConfig
    loss_level = "path"
    presets = {
        "task:ocr": {"beta_warmup": 100},  # paper: the β ramp lasts 100 iterations for OCR
        # Embedded backbone, 10 train steps: the FLUX layout stretched from 6 to 10 steps (cps gives no
        # noise on the last step, so s_max = 8), a LoRA learning rate for the 2.3M-parameter model and
        # a β ramp and EMA interval that fit runs of tens of iterations.
        "tiny-shapes": {"s_max": 8, "early": (1, 3, 5), "late": (1, 5, 8), "lr": 3e-4, "beta_warmup": 20,
                        "ema_every": 1},
        # SD3.5-Medium, 10 train steps: the same stretch of the FLUX layout (the paper gives FLUX's only)
        "sd3.5-medium": {"s_max": 8, "early": (1, 3, 5), "late": (1, 5, 8)},
        "task:pickscore": {"lr": 5e-5, "grad_clip": 0.3},  # paper: PickScore lr 5e-5, grad clip 0.3
    }

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        c = config
        if len(c.early) != len(c.late):
            from alignbench.errors import ConfigError

            raise ConfigError(f"algo.late: needs as many entries as algo.early ({len(c.early)}), got {len(c.late)}")
        fan = [c.children] if isinstance(c.children, int) else list(c.children)
        if min(fan) < 2 or (not isinstance(c.children, int) and len(fan) != len(c.early)):
            from alignbench.errors import ConfigError

            raise ConfigError(f"algo.children: {c.children} is not allowed; allowed: an integer >= 2, or one "
                              f"integer >= 2 per branch point ({len(c.early)} here, as in algo.early)")
        sig = [float(s) for s in ctx.sigmas]
        noisy = [i for i in range(ctx.num_steps) if kernel_std(c.kernel, sig[i], sig[i + 1], c.eta) > 0]
        #: s_max clamped so that every branch injects noise (§5: never branch where s = 0)
        self.s_max = min(c.s_max, max(noisy) if noisy else -1)
        if self.s_max - c.s_min + 1 < len(c.early):
            from alignbench.errors import ConfigError

            raise ConfigError(f"algo.s_max: {len(c.early)} branch points do not fit in steps {c.s_min}..{self.s_max} "
                              f"(s_max clamped to the last step where {c.kernel} injects noise)")
        self.last_branch: list[int] = []

    def plan(self, progress: Progress, rng: np.random.Generator) -> RolloutPlan:
        c = self.config
        self.last_branch = branch_steps(progress.fraction, c.s_min, self.s_max, c.early, c.late, c.kappa, rng)
        return tree_plan(self.ctx.num_steps, self.last_branch, c.children, c.eta, c.kernel, c.root_threshold)

    def beta(self, progress: Progress) -> float:
        """Reward temperature β of the target distribution ∝ exp(β·r) at this iteration (linear warm-up
        from ``beta_start`` to ``beta_end``; specs/algorithms.md §5)."""
        c = self.config
        return reward_temperature(progress.iteration, c.beta_start, c.beta_end, c.beta_warmup)

    def advantages(self, rollout: Rollout, rewards: Rewards, progress: Progress) -> torch.Tensor:
        """Per-leaf Softmax-TB advantage: R̃ = Σ_k w_k·zscore_group(R_k) clamped ±20, log P from the
        stored (old) edge log-probs, A = log softmax(β·R̃) − log softmax(log P) within each prompt."""
        beta = self.beta(progress)
        z = weighted_group_zscore(rewards.scores, rewards.weights, rewards.group)
        log_p = rollout.path_log_prob()
        adv = torch.zeros_like(rewards.total)
        for g in rewards.group.unique():
            m = rewards.group == g
            a = softmax_tb_advantage(z[m], log_p[m], beta)
            adv[m] = a - a.mean() if self.config.center else a
        return adv

    def edge_log_ratio_weights(self, rollout: Rollout) -> torch.Tensor:
        """ratio: code — GRPO-Guard's detached 1/|Δ| weights (mean 1 over the trained edges); paper: 1."""
        if self.config.ratio == "paper" or rollout.sigma.numel() == 0:
            return torch.ones(rollout.sigma.shape[0])
        inv = 1.0 / (rollout.sigma - rollout.sigma_next).abs().float()
        return inv / inv.mean()

    def path_loss(self, batch: PathBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """L = −mean_i min(r̃_i·A_i, clip(r̃_i, 1 ± ε)·A_i) with log r̃ = log-ratio + RatioNorm (paper) or
        the group-centred log-ratio (code)."""
        if self.config.ratio == "paper":
            log_r = batch.log_ratio + batch.ratio_norm
        else:
            means = torch.zeros_like(batch.log_ratio)
            for g in batch.group.unique():
                m = batch.group == g
                means = torch.where(m, batch.log_ratio[m].mean(), means)
            log_r = batch.log_ratio - means
        r = torch.exp(log_r)
        eps, adv = self.config.clip_range, batch.advantages
        loss = -torch.minimum(r * adv, r.clamp(1 - eps, 1 + eps) * adv).mean()
        with torch.no_grad():
            stats = {"clip_frac": float(((r - 1).abs() > eps).float().mean()),
                     "approx_kl": float(0.5 * (log_r**2).mean()), "ratio_mean": float(r.mean())}
        return loss, stats

    def metrics(self, progress: Progress) -> dict:
        return {"reward_beta": self.beta(progress), "branch_steps": list(self.last_branch)}
