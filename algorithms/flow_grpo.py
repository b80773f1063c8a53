"""Flow-GRPO (Liu et al., NeurIPS 2025; specs/algorithms.md §1).

- K independent roots per prompt (option ``same_latent``: one shared initial noise), ``flow_sde``
  at every step with noise level η; the trained steps are the first ⌊0.99·T⌋ (never the last).
- Option ``sde_window`` ("Flow-GRPO-Fast"): a window of w SDE steps whose start is drawn uniformly
  from a range; ODE elsewhere; only the window is trained.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from alignbench.sampling.plan import Rollout, RolloutPlan, StepSpec
from alignbench.training.algorithm import Algorithm, AlgorithmConfig, Progress, Rewards, register_algorithm
from alignbench.training.objectives import group_zscore


def flow_grpo_plan(num_steps: int, group_size: int, eta: float, same_latent: bool = False,
                   sde_window: tuple[int, int, int] | None = None,
                   rng: np.random.Generator | None = None) -> RolloutPlan:
    """Flow-GRPO's plan for one iteration.

    Args:
        num_steps: T sampling steps of training rollouts.
        group_size: K images per prompt.
        eta: η of ``flow_sde`` (paper: 0.7 SD3.5, 0.9 FLUX).
        same_latent: the K roots share one initial noise.
        sde_window: ``(w, lo, hi)``: w SDE steps starting at a step drawn uniformly from lo..hi.
        rng: draws the window start.

    Raises:
        ValueError: the window does not fit in T steps.
    """
    if sde_window is None:
        n_trained = math.floor(0.99 * num_steps)
        steps = [StepSpec("flow_sde", eta, 1, i < n_trained) for i in range(num_steps)]
    else:
        w, lo, hi = sde_window
        if lo < 0 or hi < lo or hi + w > num_steps:
            raise ValueError(f"sde_window: start range {lo}..{hi} with width {w} does not fit {num_steps} steps")
        start = int((rng or np.random.default_rng()).integers(lo, hi, endpoint=True))
        steps = [StepSpec("flow_sde", eta, 1, True) if start <= i < start + w else StepSpec("ode")
                 for i in range(num_steps)]
    return RolloutPlan(group_size, steps, shared_noise=same_latent)


class FlowGRPOConfig(AlgorithmConfig):
    """Flow-GRPO hyperparameters; defaults are the paper's for FLUX.1-dev (Liu et al. 2025, §5 and
    App. "Implementation details") unless marked [code] (the released flow_grpo repository)."""

    eta: float = Field(0.9, ge=0, description="flow_sde noise level η (paper: 0.9 FLUX, 0.7 SD3.5)")
    same_latent: bool = Field(False, description="the K roots share one initial noise [code option]")
    sde_window: tuple[int, int, int] | None = Field(
        None, description="(w, lo, hi): w SDE steps starting uniformly in lo..hi, ODE elsewhere (Flow-GRPO-Fast)")
    global_std: bool = Field(False, description="divide by the std of all rewards of the iteration [code option]")
    lr: float = Field(3e-4, gt=0, description="paper: 3e-4")
    weight_decay: float = Field(1e-4, ge=0, description="paper: AdamW wd 1e-4")
    grad_clip: float = Field(1.0, gt=0, description="paper: 1.0")
    inner_updates: int = Field(2, ge=1, description="paper: 2 optimizer steps per iteration")
    clip_range: float = Field(1e-4, gt=0, description="paper: ε = 1e-4 (mean log-prob reduction)")
    kl_beta: float = Field(0.0, ge=0, description="paper: 0 on FLUX; 0.04 GenEval/OCR, 0.01 PickScore on SD3.5")
    ema_decay: float = Field(0.9, ge=0, lt=1, description="[code] EMA 0.9")
    ema_every: int = Field(8, ge=1, description="[code] every 8 optimizer steps")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="paper: constant")


@register_algorithm("flow_grpo")
class FlowGRPO(Algorithm):
    """Flow-GRPO: independent SDE rollouts, group z-score advantage, per-edge clipped surrogate + KL."""

    description = "Flow-GRPO: K independent flow-SDE rollouts, group z-score advantage, per-edge PPO clip + KL"
    paper = "Liu et al., Flow-GRPO: Training Flow Matching Models via Online RL, NeurIPS 2025"
    group_size = 24
    Config = FlowGRPOConfig
    presets = {
        # Embedded backbone (10 train steps): the SD3.5 GenEval/OCR settings (η 0.7, β 0.04), a
        # learning rate for the 2.3M-parameter transformer's LoRA, EMA every step (short runs).
        "tiny-shapes": {"eta": 0.7, "kl_beta": 0.04, "lr": 3e-4, "ema_every": 1, "clip_range": 1e-3},
        # SD3.5-Medium (Flow-GRPO's main recipe): η 0.7, β 0.04 for GenEval/OCR and 0.01 for PickScore
        "sd3.5-medium": {"eta": 0.7, "kl_beta": 0.04},
        "sd3.5-medium:pickscore": {"kl_beta": 0.01},
    }

    def plan(self, progress: Progress, rng: np.random.Generator) -> RolloutPlan:
        c = self.config
        return flow_grpo_plan(self.ctx.num_steps, self.ctx.group_size, c.eta, c.same_latent, c.sde_window, rng)

    def advantages(self, rollout: Rollout, rewards: Rewards, progress: Progress) -> torch.Tensor:
        """Per-leaf group z-score of the training reward (weighted sum of sub-scores first); every edge
        of a trajectory gets its leaf's value."""
        return group_zscore(rewards.total, rewards.group, global_std=self.config.global_std)
