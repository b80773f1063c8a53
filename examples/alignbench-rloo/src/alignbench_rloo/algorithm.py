"""RLOO for flow-matching models: an example of a complete alignbench algorithm plugin.

The algorithm (REINFORCE Leave-One-Out, Kool et al. 2019; Ahmadian et al. 2024, applied to flow
models):

- Plan: K independent roots per prompt. A window of ``window`` trained ``flow_sde`` steps starts
  at a step drawn uniformly from 0 … T − window − 1. ODE is used everywhere else, so the last
  transition is never trained.
- Advantage: A_i = R_i − mean_{j≠i} R_j within the prompt's group, i.e. K/(K − 1)·(R_i − mean R).
  There is no division by the std.
- Loss: the engine's per-edge clipped surrogate (the default ``edge_loss``), with no KL.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from alignbench.sampling.plan import Rollout, RolloutPlan, StepSpec
from alignbench.training.algorithm import Algorithm, AlgorithmConfig, Progress, Rewards


def leave_one_out(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """R_i − mean of the other rewards of i's group: float [N] from rewards float [N] and groups long [N].

    Raises:
        ValueError: a group has fewer than 2 members.
    """
    out = torch.zeros_like(rewards, dtype=torch.float32)
    for g in groups.unique():
        m = groups == g
        k = int(m.sum())
        if k < 2:
            raise ValueError("leave-one-out needs at least 2 samples per group")
        r = rewards[m].double()
        out[m] = ((r * k - r.sum()) / (k - 1)).float()
    return out


class RLOOConfig(AlgorithmConfig):
    """RLOO hyperparameters (the shared ones come from AlgorithmConfig)."""

    eta: float = Field(0.7, ge=0, description="flow_sde noise level η")
    window: int = Field(2, ge=1, description="trained SDE steps per trajectory")
    clip_range: float = Field(1e-3, gt=0, description="PPO clip range ε")


class RLOO(Algorithm):
    """RLOO: independent rollouts with a random SDE window and a leave-one-out baseline."""

    description = "RLOO (example plugin): random flow-SDE window, leave-one-out baseline, per-edge PPO clip"
    paper = "Kool et al. 2019; Ahmadian et al., Back to Basics (RLOO), 2024"
    group_size = None
    Config = RLOOConfig
    presets = {"tiny-shapes": {"lr": 3e-4, "ema_every": 1}}

    def plan(self, progress: Progress, rng: np.random.Generator) -> RolloutPlan:
        t, w = self.ctx.num_steps, self.config.window
        start = int(rng.integers(0, t - w))  # 0 … T − w − 1
        steps = [StepSpec("flow_sde", self.config.eta, 1, True) if start <= i < start + w else StepSpec("ode")
                 for i in range(t)]
        return RolloutPlan(self.ctx.group_size, steps)

    def advantages(self, rollout: Rollout, rewards: Rewards, progress: Progress) -> torch.Tensor:
        return leave_one_out(rewards.total, rewards.group)
