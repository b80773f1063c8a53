"""Flow-GRPO's rollout plan (specs/algorithms.md §1)."""

from __future__ import annotations

import numpy as np
import pytest
from alignbench.algorithms.flow_grpo import flow_grpo_plan


@pytest.mark.parametrize("t,trained", [(6, 5), (10, 9), (100, 99), (1, 0)])
def test_all_but_the_last_step_are_trained(t, trained):
    plan = flow_grpo_plan(t, 24, 0.9)
    assert sum(s.trained for s in plan.steps) == trained and not plan.steps[-1].trained
    assert all(s.kernel == "flow_sde" and s.eta == 0.9 and s.fanout == 1 for s in plan.steps)
    assert plan.leaves_per_prompt() == 24 and plan.nfe_per_prompt() == 24 * t
    assert plan.edges_per_prompt() == 24 * trained


def test_same_latent_shares_the_root():
    plan = flow_grpo_plan(6, 8, 0.9, same_latent=True)
    assert plan.leaves_per_prompt() == 8 and plan.nfe_per_prompt() == 1 + 8 * 5


def test_sde_window_start_is_uniform_and_only_the_window_is_trained():
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(3000):
        plan = flow_grpo_plan(10, 4, 0.9, sde_window=(2, 0, 4), rng=rng)
        trained = [i for i, s in enumerate(plan.steps) if s.trained]
        assert len(trained) == 2 and trained[1] == trained[0] + 1
        assert all(s.kernel == "ode" for i, s in enumerate(plan.steps) if i not in trained)
        starts.append(trained[0])
    counts = np.bincount(starts, minlength=5)
    assert counts.min() > 3000 / 5 * 0.85 and counts.max() < 3000 / 5 * 1.15
    with pytest.raises(ValueError, match="does not fit"):
        flow_grpo_plan(10, 4, 0.9, sde_window=(3, 0, 8))
