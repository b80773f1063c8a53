"""TreeGRPO (Ding & Ye, ICLR 2026; specs/algorithms.md §3).

- One root per prompt; a contiguous window of w steps where **every** step branches into k children
  (independent ``flow_sde`` noise around the parent's shared mean); ODE outside the window; only the
  branching edges are trained. k = w = 3 gives 27 leaves, 13 internal nodes and 39 edges.
- The window start i is drawn each iteration from a truncated geometric law on {0, …, T − w − 1}:
  P[i] ∝ r^i (r = 0.5) [paper]; option ``window: shifting`` starts at 0 and moves one step later
  every ``shift_every`` iterations [code].
- Advantages per edge: leaf z-score over the prompt's leaves (multi-reward: weighted sum of
  per-reward z-scores), backed up the tree: a node's value is the average of its children's
  values weighted by softmax of the children's log-probs [paper], or their plain mean [code,
  ``backup: mean``]; an edge gets the value of the node it leads to.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from alignbench.sampling.plan import Rollout, RolloutPlan, StepSpec
from alignbench.training.algorithm import Algorithm, AlgorithmConfig, Progress, Rewards, register_algorithm
from alignbench.training.objectives import weighted_group_zscore


def truncated_geometric(n: int, r: float) -> np.ndarray:
    """P[i] ∝ r^i on {0, …, n − 1}, float64 [n] summing to 1 (TreeGRPO's window-start law).

    Raises:
        ValueError: n < 1 or r <= 0.
    """
    if n < 1 or r <= 0:
        raise ValueError(f"truncated_geometric needs n >= 1 and r > 0, got n={n}, r={r}")
    p = r ** np.arange(n, dtype=np.float64)
    return p / p.sum()


def treegrpo_plan(num_steps: int, start: int, width: int, fanout: int, eta: float) -> RolloutPlan:
    """One root; steps ``start … start + width − 1`` are trained ``flow_sde`` branch steps with
    ``fanout`` children each; ODE elsewhere.

    Raises:
        ValueError: the window does not fit in ``num_steps`` steps.
    """
    if start < 0 or start + width > num_steps:
        raise ValueError(f"window {start}..{start + width - 1} does not fit {num_steps} steps")
    steps = [StepSpec("flow_sde", eta, fanout, True) if start <= i < start + width else StepSpec("ode")
             for i in range(num_steps)]
    return RolloutPlan(1, steps)


def backup_edge_values(rollout: Rollout, leaf_values: torch.Tensor, weighted: bool) -> torch.Tensor:
    """Back leaf values up the rollout tree: float [E] value of the node each edge leads to.

    A node below the last trained step has the mean value of its leaves; an internal node's value is
    Σ_c w_c·value(c) over its child edges c, with w = softmax of the children's stored log-probs
    (``weighted``) or uniform. Children of edge e are the edges of the next trained step whose
    leaves lie below e (read off the incidence matrix).

    Args:
        rollout: the rollout (incidence [L, E], step [E], log_prob [E], edge_prompt [E]).
        leaf_values: float [L].
        weighted: softmax-of-log-prob weights (TreeGRPO paper) instead of the plain mean (code).
    """
    m = rollout.incidence.double()
    leaf_values = leaf_values.double()
    n_edges = m.shape[1]
    values = torch.zeros(n_edges, dtype=torch.float64)
    steps = rollout.step
    done = torch.zeros(n_edges, dtype=torch.bool)
    for s in sorted(steps.unique().tolist(), reverse=True):
        for e in (steps == s).nonzero().flatten().tolist():
            below = m[:, e] > 0
            later = (steps > s) & (rollout.edge_prompt == rollout.edge_prompt[e])
            # child edges: at the first later trained step, whose leaves are all below e
            cand = [c for c in later.nonzero().flatten().tolist() if bool((m[:, c] <= m[:, e]).all())]
            if cand:
                nxt = min(int(steps[c]) for c in cand)
                kids = [c for c in cand if int(steps[c]) == nxt]
                assert all(done[c] for c in kids)
                w = (torch.softmax(rollout.log_prob[kids].double(), 0) if weighted
                     else torch.full((len(kids),), 1.0 / len(kids), dtype=torch.float64))
                values[e] = (w * values[kids]).sum()
            else:
                values[e] = leaf_values[below].mean()
            done[e] = True
    return values.float()


class TreeGRPOConfig(AlgorithmConfig):
    """TreeGRPO hyperparameters; defaults are the paper's (Ding & Ye 2026) unless marked [code]."""

    eta: float = Field(0.9, ge=0, description="flow_sde noise level η (Flow-GRPO's FLUX value, which TreeGRPO keeps)")
    fanout: int = Field(3, ge=2, description="paper: k = 3 children at every window step")
    window: int = Field(3, ge=1, description="paper: w = 3 branching steps (k^w = 27 leaves)")
    window_law: Literal["geometric", "shifting"] = Field(
        "geometric", description="paper: truncated geometric start; code: shifting (0, +1 every shift_every)")
    geometric_r: float = Field(0.5, gt=0, description="paper: P[i] ∝ r^i with r = 0.5")
    shift_every: int = Field(50, ge=1, description="[code] iterations per one-step shift of the window")
    backup: Literal["weighted", "mean"] = Field("weighted", description="paper: softmax of children's log-probs; "
                                                "code: plain mean")
    lr: float = Field(1e-5, gt=0, description="paper: 1e-5")
    clip_range: float = Field(1e-4, gt=0, description="paper: ε = 1e-4")
    kl_beta: float = Field(0.0, ge=0, description="paper: no KL")
    inner_updates: int = Field(1, ge=1, description="one optimizer step per iteration")


@register_algorithm("treegrpo")
class TreeGRPO(Algorithm):
    """TreeGRPO: one-root k-ary tree over a random window, leaf z-scores backed up to the edges."""

    description = "TreeGRPO: k-ary flow-SDE tree over a random window, leaf z-scores backed up to every edge"
    paper = "Ding & Ye, TreeGRPO, ICLR 2026"
    group_size = 27
    Config = TreeGRPOConfig
    advantage_level = "edge"
    presets = {
        # Embedded backbone: η 0.7 (Flow-GRPO's SD3.5 value) and a learning rate for the small LoRA.
        "tiny-shapes": {"eta": 0.7, "lr": 3e-4, "ema_every": 1, "clip_range": 1e-3},
        "sd3.5-medium": {"eta": 0.7},  # Flow-GRPO's SD3.5 noise level (TreeGRPO reports FLUX/SD3.5 alike)
    }

    def window_start(self, progress: Progress, rng: np.random.Generator) -> int:
        """This iteration's window start i (see the module docstring)."""
        c, last = self.config, self.ctx.num_steps - self.config.window - 1
        if last < 0:
            from alignbench.errors import ConfigError

            raise ConfigError(f"algo.window: {c.window} branching steps need at least {c.window + 1} sampling steps, "
                              f"the model trains with {self.ctx.num_steps}")
        if c.window_law == "shifting":
            return min(progress.iteration // c.shift_every, last)
        return int(rng.choice(last + 1, p=truncated_geometric(last + 1, c.geometric_r)))

    def plan(self, progress: Progress, rng: np.random.Generator) -> RolloutPlan:
        c = self.config
        self.last_start = self.window_start(progress, rng)
        return treegrpo_plan(self.ctx.num_steps, self.last_start, c.window, c.fanout, c.eta)

    def metrics(self, progress: Progress) -> dict:
        """The realised window start of the iteration."""
        return {"window_start": self.last_start}

    def advantages(self, rollout: Rollout, rewards: Rewards, progress: Progress) -> torch.Tensor:
        """Per-edge advantages float [E]: weighted sum of per-reward leaf z-scores (over each prompt's
        leaves), backed up with :func:`backup_edge_values`."""
        leaf = weighted_group_zscore(rewards.scores, rewards.weights, rewards.group)
        return backup_edge_values(rollout, leaf, weighted=self.config.backup == "weighted")
