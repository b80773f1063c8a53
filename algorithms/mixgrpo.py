"""MixGRPO (Li et al., 2025; specs/algorithms.md §2).

- A window W(l) = {l, …, l + w − 1} of SDE steps, ODE elsewhere; only window edges are trained. The
  K images of a group share one initial noise, so the ODE prefix before the window is computed once
  per prompt (the executor's prefix sharing).
- Window schedule ``progressive`` [paper]: l = 0 at the start and l ← min(l + s, l_max) every τ
  iterations, i.e. l(n) = min(s·⌊n/τ⌋, l_max). The spec writes the cap as T − w and adds "never
  train the last transition"; a window starting at T − w would contain the last transition, so
  alignbench caps at l_max = T − w − 1. Options: ``frozen`` (l ≡ 0) and ``random`` (l uniform on
  {0, …, l_max} each iteration).
- Kernel in the window: ``flow_sde`` (default) or ``cps``.
- MixGRPO-Flash (``flash: true``): after the window the Euler ODE is replaced by DPM-Solver++(2M)
  (kernel ``dpmpp2m``) on a compressed grid: the T − l − w remaining steps become
  max(1, ⌈r̃·(T − l − w)⌉) steps over evenly spaced points of the base grid's tail (r̃ = 0.4;
  Flash* freezes l = 0 with r̃ = 0.2, i.e. ``window_schedule: frozen, compression: 0.2``).
- Advantage: per-reward z-score within the group, weighted sum. Loss: per-edge clipped surrogate
  (ε = 1e-4); no KL on FLUX.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from alignbench.sampling.plan import Rollout, RolloutPlan, StepSpec
from alignbench.training.algorithm import Algorithm, AlgorithmConfig, Progress, Rewards, register_algorithm
from alignbench.training.objectives import weighted_group_zscore


def compressed_tail(sigmas: list[float], start: int, ratio: float) -> list[float]:
    """Evenly spaced points of ``sigmas[start:]`` (which ends at 0): max(1, ⌈ratio·n⌉) + 1 values
    including both ends, n = len(sigmas) − 1 − start."""
    tail = sigmas[start:]
    n = len(tail) - 1
    m = max(1, math.ceil(ratio * n - 1e-9))
    idx = np.unique(np.round(np.linspace(0, n, m + 1)).astype(int))
    return [float(tail[i]) for i in idx]


def mixgrpo_plan(sigmas: list[float], group_size: int, start: int, width: int, eta: float,
                 kernel: str = "flow_sde", flash: bool = False, compression: float = 0.4) -> RolloutPlan:
    """MixGRPO's plan: ``group_size`` roots sharing one initial noise; steps start … start + width − 1
    stochastic and trained; ODE (Euler) before; after the window Euler on the base grid, or with
    ``flash`` DPM-Solver++(2M) on :func:`compressed_tail`.

    Args:
        sigmas: the base σ grid, T + 1 values.

    Raises:
        ValueError: the window does not fit before the last transition.
    """
    t = len(sigmas) - 1
    if start < 0 or start + width > t - 1:
        raise ValueError(f"window {start}..{start + width - 1} must end before the last of {t} steps")
    window = [StepSpec(kernel, eta, 1, True) for _ in range(width)]
    head = [StepSpec("ode") for _ in range(start)]
    if not flash:
        tail = [StepSpec("ode") for _ in range(t - start - width)]
        return RolloutPlan(group_size, head + window + tail, shared_noise=True)
    grid = compressed_tail(list(sigmas), start + width, compression)
    tail = [StepSpec("dpmpp2m") for _ in range(len(grid) - 1)]
    full = tuple(float(s) for s in sigmas[: start + width]) + tuple(grid)
    return RolloutPlan(group_size, head + window + tail, shared_noise=True, sigmas=full)


class MixGRPOConfig(AlgorithmConfig):
    """MixGRPO hyperparameters; defaults are the paper's for FLUX (Li et al. 2025) unless noted."""

    eta: float = Field(0.7, ge=0, description="paper: η = 0.7")
    window: int = Field(4, ge=1, description="paper: w = 4 SDE steps")
    window_schedule: Literal["progressive", "frozen", "random"] = Field("progressive", description="paper: progressive")
    shift_every: int = Field(25, ge=1, description="paper: τ = 25 iterations per move (FLUX; 150 on SD3.5)")
    shift_by: int = Field(1, ge=1, description="paper: s = 1 step per move")
    kernel: Literal["flow_sde", "cps"] = Field("flow_sde", description="kernel inside the window (cps: option)")
    flash: bool = Field(False, description="MixGRPO-Flash: DPM-Solver++(2M) on a compressed grid after the window")
    compression: float = Field(0.4, gt=0, le=1, description="paper: r̃ = 0.4 (Flash*: 0.2 with a frozen window)")
    lr: float = Field(1e-5, gt=0, description="paper: 1e-5 (full fine-tuning; LoRA in the matched protocol)")
    clip_range: float = Field(1e-4, gt=0, description="paper: ε = 1e-4")
    kl_beta: float = Field(0.0, ge=0, description="paper: no KL on FLUX")


@register_algorithm("mixgrpo")
class MixGRPO(Algorithm):
    """MixGRPO: a sliding window of trained SDE steps inside an ODE trajectory (optional Flash)."""

    description = "MixGRPO: sliding SDE window inside an ODE trajectory, shared noise; Flash: DPM-Solver++ tail"
    paper = "Li et al., MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed ODE-SDE, 2025"
    Config = MixGRPOConfig
    presets = {
        # Embedded backbone: 10 train steps, so w = 4 leaves l_max = 5; a 40-iteration run moves the
        # window every 8 iterations; learning rate for the small LoRA.
        "tiny-shapes": {"shift_every": 8, "lr": 3e-4, "ema_every": 1, "clip_range": 1e-3},
        # SD3.5 (paper): T = 10 steps, w = 4, τ = 150, η 0.7
        "sd3.5-medium": {"window": 4, "shift_every": 150, "eta": 0.7},
    }

    def window_start(self, progress: Progress, rng: np.random.Generator) -> int:
        """l of this iteration (module docstring)."""
        c = self.config
        l_max = self.ctx.num_steps - c.window - 1
        if l_max < 0:
            from alignbench.errors import ConfigError

            raise ConfigError(f"algo.window: {c.window} SDE steps need at least {c.window + 1} sampling steps, "
                              f"the model trains with {self.ctx.num_steps}")
        if c.window_schedule == "frozen":
            return 0
        if c.window_schedule == "random":
            return int(rng.integers(0, l_max, endpoint=True))
        return min(c.shift_by * (progress.iteration // c.shift_every), l_max)

    def plan(self, progress: Progress, rng: np.random.Generator) -> RolloutPlan:
        c = self.config
        self.last_start = self.window_start(progress, rng)
        return mixgrpo_plan(list(self.ctx.sigmas), self.ctx.group_size, self.last_start,
                            c.window, c.eta, c.kernel, c.flash, c.compression)

    def metrics(self, progress: Progress) -> dict:
        """The realised window start of the iteration."""
        return {"window_start": self.last_start}

    def advantages(self, rollout: Rollout, rewards: Rewards, progress: Progress) -> torch.Tensor:
        """Per-leaf weighted sum of per-reward group z-scores (weights as the task's training reward)."""
        return weighted_group_zscore(rewards.scores, rewards.weights, rewards.group)
