"""Flow-GRPO (Liu et al., NeurIPS 2025; specs/algorithms.md §1).

This file holds Flow-GRPO's rollout plan as the paper states it; the plugin class (advantage and
loss on the shared engine) is added with the engine.

- K independent roots per prompt (option ``same_latent``: one shared initial noise), ``flow_sde``
  at every step with noise level η; the trained steps are the first ⌊0.99·T⌋ (never the last).
- Option ``sde_window`` ("Flow-GRPO-Fast"): a window of w SDE steps whose start is drawn uniformly
  from a range; ODE elsewhere; only the window is trained.
"""

from __future__ import annotations

import math

import numpy as np

from alignbench.sampling.plan import RolloutPlan, StepSpec


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
