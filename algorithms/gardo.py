"""GARDO (He et al., 2025; specs/algorithms.md §4): Flow-GRPO's plan and clipped surrogate with three
regularisers.

- **Diversity-aware advantage.** A_i = R_i − mean_group(R) (no std division). With image features
  e_i (the model domain's extractor, :mod:`alignbench.metrics.features`; DINOv2 in the paper),
  d_i = min_{j≠i}(1 − cos(e_i, e_j)) within the group; if A_i ≥ 0 then A_i ← A_i·d_i/mean_group(d)
  (``shaping: code``, default: the scale has group mean 1) or A_i·d_i (``shaping: paper``);
  negative advantages are unchanged.
- **Gated KL.** Uncertainty U_i = winrate(proxy reward) − mean over auxiliary rewards of their
  winrate, winrate = fraction of the iteration's batch (all processes) the sample beats (ties count
  half). Only the ⌈k·K⌉ samples of each group with the largest U get the KL term. k starts at
  ``gate_init`` = 0.1; with the last 20 batch statistics of U kept: a new one above their max gives
  k ← min(1.1k, 1), below their min k ← 0.9k. The statistic is the mean of the batch's
  non-negative U (the released code's). The spec's and paper's "batch-mean U" is identically 0 when
  win rates are over the batch (every reward's win rates average 1/2), so k would never move, or
  move on floating-point rounding alone (which alignbench did before this was found). ``uncertainty_sign: code`` flips the sign of U (the released code ranks the
  other way round). Auxiliary rewards are the task's sub-scores that are not part of the training
  reward (GenEval: accuracy and strict; OCR: exact match). A task without any gates on the proxy
  alone (U = winrate of the proxy), and the run's metrics say so (``gardo_aux = 0``).
- **Adaptive reference.** The reference is a frozen copy of the LoRA adapter (the engine's
  ``reference = "snapshot"``), reset to the current policy when the mean KL to it exceeds
  ``reset_kl`` (paper 1e-4) or after ``reset_steps`` optimizer steps (paper 100; code: 3e-4 and
  15 iterations).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from alignbench.metrics.features import cosine_distance_matrix
from alignbench.sampling.plan import Rollout, RolloutPlan
from alignbench.training.algorithm import Algorithm, AlgorithmConfig, Progress, Rewards, register_algorithm

from .flow_grpo import flow_grpo_plan


def diversity_shaped_advantages(rewards: torch.Tensor, groups: torch.Tensor, features: torch.Tensor,
                                shaping: Literal["code", "paper"] = "code") -> torch.Tensor:
    """GARDO's diversity-aware advantage, float [N] (He et al. 2025, §3.3; specs/algorithms.md §4).

    Args:
        rewards: float [N]; groups: long [N] group index; features: float [N, F].
        shaping: ``code``: A·d/mean_group(d) for A ≥ 0; ``paper``: A·d.
    """
    out = torch.zeros(rewards.shape[0], dtype=torch.float64)
    for g in groups.unique():
        m = (groups == g).nonzero().flatten()
        r = rewards[m].double()
        a = r - r.mean()
        if len(m) > 1:
            dist = cosine_distance_matrix(features[m])
            dist.fill_diagonal_(float("inf"))
            d = dist.min(1).values
            scale = d / d.mean() if shaping == "code" else d
            if shaping == "code" and not bool(d.mean() > 0):
                scale = torch.ones_like(d)  # all samples identical: no diversity information
            a = torch.where(a >= 0, a * scale, a)
        out[m] = a
    return out.float()


def winrate(values: torch.Tensor) -> torch.Tensor:
    """Fraction of the other samples each sample beats (ties count half), float [N] in [0, 1]."""
    v = values.double()
    n = v.shape[0]
    if n < 2:
        return torch.full((n,), 0.5, dtype=torch.float64)
    beats = (v[:, None] > v[None, :]).double().sum(1) + 0.5 * ((v[:, None] == v[None, :]).double().sum(1) - 1)
    return beats / (n - 1)


def uncertainty(proxy: torch.Tensor, auxiliary: list[torch.Tensor], sign: Literal["paper", "code"] = "paper") -> torch.Tensor:
    """U = winrate(proxy) − mean_aux winrate(aux), float [N] (winrate over the whole batch); with no
    auxiliary reward U = winrate(proxy). ``sign = "code"`` returns −U."""
    u = winrate(proxy)
    if auxiliary:
        u = u - torch.stack([winrate(a) for a in auxiliary]).mean(0)
    return -u if sign == "code" else u


def batch_uncertainty(u: torch.Tensor) -> float:
    """The statistic of one batch's U that drives the gate fraction: the mean of its non-negative
    values (0.0 if none), as in GARDO's released code (its ``RiskCompensator`` gets the U ≥ 0).

    Args:
        u: float [N] uncertainties of the whole iteration's batch (:func:`uncertainty`).

    The plain mean is no statistic: win rates over the batch average exactly 1/2 for every reward,
    so mean(U) = 0 for every batch (up to rounding).
    """
    pos = u[u >= 0]
    return float(pos.mean()) if pos.numel() else 0.0


class KLGate:
    """GARDO's adaptive gate fraction k (specs/algorithms.md §4 "Gated KL").

    Args:
        k: initial fraction; history: how many past batch means of U are kept (20).
    """

    def __init__(self, k: float = 0.1, history: int = 20):
        self.k = k
        self.history: deque[float] = deque(maxlen=history)

    def update(self, mean_u: float) -> float:
        """Apply the rule with this batch's statistic of U (:func:`batch_uncertainty`), then remember
        it; returns the new k."""
        if self.history:
            if mean_u > max(self.history):
                self.k = min(1.1 * self.k, 1.0)
            elif mean_u < min(self.history):
                self.k = 0.9 * self.k
        self.history.append(float(mean_u))
        return self.k

    def mask(self, u: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """1 for the ⌈k·K⌉ samples with the largest U in each group (K its size), else 0: float [N]."""
        out = torch.zeros(u.shape[0])
        for g in groups.unique():
            m = (groups == g).nonzero().flatten()
            n = min(len(m), max(1, math.ceil(self.k * len(m) - 1e-9)))
            top = torch.argsort(u[m], descending=True, stable=True)[:n]
            out[m[top]] = 1.0
        return out


class GARDOConfig(AlgorithmConfig):
    """GARDO hyperparameters; defaults are the paper's (He et al. 2025) unless marked [code]."""

    eta: float = Field(0.9, ge=0, description="flow_sde η (Flow-GRPO's FLUX value; GARDO keeps Flow-GRPO's sampler)")
    shaping: Literal["code", "paper"] = Field("code", description="A·d/mean(d) [code, default] or A·d [paper]")
    gate_init: float = Field(0.1, gt=0, le=1, description="paper: initial KL gate fraction k = 0.1")
    gate_history: int = Field(20, ge=1, description="paper: last 20 batch statistics of U")
    uncertainty_sign: Literal["paper", "code"] = Field("paper", description="code: the released ranking (sign flipped)")
    reset_kl: float = Field(1e-4, gt=0, description="paper: reset the reference when mean KL > 1e-4 (code 3e-4)")
    reset_steps: int = Field(100, ge=1, description="paper: ... or after 100 optimizer steps (code: 15 iterations)")
    kl_beta: float = Field(0.04, ge=0, description="paper: β = 0.04 (0.07 GenEval, 0.01 FLUX)")
    clip_range: float = Field(1e-4, gt=0, description="paper: ε = 1e-4")
    lr: float = Field(3e-4, gt=0, description="paper: 3e-4")
    inner_updates: int = Field(2, ge=1, description="Flow-GRPO's 2 optimizer steps per iteration")


@register_algorithm("gardo")
class GARDO(Algorithm):
    """GARDO: Flow-GRPO + diversity-aware advantage, uncertainty-gated KL, adaptive reference."""

    description = "GARDO: Flow-GRPO + diversity-shaped advantage, uncertainty-gated KL, resetting reference"
    paper = "He et al., GARDO, 2025"
    group_size = 24
    Config = GARDOConfig
    needs_features = True
    reference = "snapshot"
    presets = {
        "tiny-shapes": {"eta": 0.7, "lr": 3e-4, "ema_every": 1, "clip_range": 1e-3},
        "sd3.5-medium": {"eta": 0.7},  # GARDO keeps Flow-GRPO's SD3.5 sampler
        "task:geneval": {"kl_beta": 0.07},
    }

    def __init__(self, config: GARDOConfig, ctx):
        super().__init__(config, ctx)
        self.gate = KLGate(config.gate_init, config.gate_history)
        self._edge_gate: torch.Tensor | None = None
        self._last: dict[str, float] = {}

    def plan(self, progress: Progress, rng: np.random.Generator) -> RolloutPlan:
        return flow_grpo_plan(self.ctx.num_steps, self.ctx.group_size, self.config.eta)

    def advantages(self, rollout: Rollout, rewards: Rewards, progress: Progress) -> torch.Tensor:
        """Per-leaf diversity-shaped advantages; also sets this iteration's KL gate."""
        if rewards.features is None:
            raise ValueError("GARDO needs image features (Rewards.features); the engine fills them when "
                             "needs_features is set")
        adv = diversity_shaped_advantages(rewards.total, rewards.group, rewards.features, self.config.shaping)
        aux_keys = [k for k in rewards.scores if not rewards.weights.get(k)]
        # win rates over the whole iteration's batch, all processes together (ctx.gather), so that an
        # N-process run gates the samples a one-process run gates and every process updates k alike
        gather = self.ctx.gather
        u_all = uncertainty(gather(rewards.total), [gather(rewards.scores[k]) for k in aux_keys],
                            self.config.uncertainty_sign)
        u = u_all[self.ctx.local_slice(rewards.total.shape[0])]
        leaf_gate = self.gate.mask(u, rewards.group)  # k of this iteration, then update it
        k_used = self.gate.k
        stat = batch_uncertainty(u_all)
        self.gate.update(stat)
        counts = rollout.incidence.sum(0).clamp_min(1)
        self._edge_gate = (rollout.incidence.t() @ leaf_gate) / counts  # edges of gated leaves
        self._last = {"gardo_gate_k": k_used, "gardo_gated": float(leaf_gate.mean()),
                      "gardo_uncertainty": stat, "gardo_aux": len(aux_keys)}
        return adv

    def kl_edge_weights(self, rollout: Rollout) -> torch.Tensor | None:
        """The KL gate of this iteration, float [n_edges] in [0, 1]: per trained edge, the fraction of its
        leaves among the ⌈k·K⌉ of their group with the largest uncertainty U (1 or 0 on Flow-GRPO's
        chains; specs/algorithms.md §4). None before the first :meth:`advantages` call."""
        return self._edge_gate

    def reset_reference(self, stats: dict[str, float], optimizer_steps: int) -> bool:
        """Reset the reference to the current policy when the KL exceeds ``reset_kl`` or after
        ``reset_steps`` optimizer steps since the last reset (specs/algorithms.md §4)."""
        return stats["kl"] > self.config.reset_kl or optimizer_steps >= self.config.reset_steps

    def metrics(self, progress: Progress) -> dict[str, Any]:
        return dict(self._last)

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.gate.k, "history": list(self.gate.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.gate.k = state["k"]
            self.gate.history.clear()
            self.gate.history.extend(state["history"])
