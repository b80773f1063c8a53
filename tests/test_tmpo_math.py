"""TMPO's advantage, temperature and dynamic branch schedule (specs/algorithms.md §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from alignbench.algorithms.tmpo import branch_steps, reward_temperature, softmax_tb_advantage

from alignbench.sampling.kernels import kernel_std


@pytest.mark.parametrize("seed", range(5))
def test_softmax_tb_identities(seed):
    g = torch.Generator().manual_seed(seed)
    r, lp = torch.randn(27, generator=g), torch.randn(27, generator=g) * 3 - 50
    beta = 1.3
    a = softmax_tb_advantage(r, lp, beta).double()
    q, p = torch.softmax(beta * r.double(), 0), torch.softmax(lp.double(), 0)
    kl_qp = (q * (q.log() - p.log())).sum()
    kl_pq = (p * (p.log() - q.log())).sum()
    assert (q * a).sum().item() == pytest.approx(kl_qp.item(), abs=1e-5) and kl_qp >= 0
    assert (p * a).sum().item() == pytest.approx(-kl_pq.item(), abs=1e-5)


def test_advantage_is_zero_when_the_policy_matches_the_target():
    r = torch.tensor([0.5, -1.0, 2.0])
    a = softmax_tb_advantage(r, 1.5 * r + 7.0, beta=1.5)  # log P = β·R̃ + const
    assert torch.allclose(a, torch.zeros(3), atol=1e-6)


def test_reward_temperature_curriculum():
    assert reward_temperature(0) == pytest.approx(0.8)
    assert reward_temperature(75) == pytest.approx(1.4)
    assert reward_temperature(150) == reward_temperature(400) == pytest.approx(2.0)
    assert reward_temperature(50, warmup=100) == pytest.approx(1.4)


def test_branch_schedule_mean_follows_the_curriculum_and_stays_in_range():
    early, late = (1, 2, 3), (1, 3, 5)
    rng = np.random.default_rng(0)
    for rho in (0.0, 0.5, 1.0):
        draws = np.array([branch_steps(rho, 1, 5, early, late, 6.0, rng) for _ in range(4000)])
        assert draws.min() >= 1 and draws.max() <= 5
        assert np.all(np.diff(draws, axis=1) >= 1)  # distinct, sorted
        target = [e + (lt - e) * rho for e, lt in zip(early, late, strict=True)]
        # the Beta means are the targets; rounding, sorting and the gap rule move them a little
        assert np.allclose(draws.mean(0), target, atol=0.45), (rho, draws.mean(0), target)
    late_mean = np.array([branch_steps(1.0, 1, 5, early, late, 6.0, rng) for _ in range(2000)]).mean(0)
    early_mean = np.array([branch_steps(0.0, 1, 5, early, late, 6.0, rng) for _ in range(2000)]).mean(0)
    assert late_mean[2] - early_mean[2] > 1.0  # the last branch point moves later


def test_branch_schedule_never_uses_a_step_without_noise():
    # TMPO on a 6-step grid with cps: the last step (σ' = 0) has std 0, so s_max = 4 (0-based)
    sig = np.linspace(1, 0, 7)
    noisy = [i for i in range(6) if kernel_std("cps", sig[i], sig[i + 1], 0.7) > 0]
    s_max = max(noisy)
    assert s_max == 4
    rng = np.random.default_rng(1)
    for _ in range(2000):
        steps = branch_steps(1.0, 1, s_max, (1, 2, 3), (1, 3, 5), 6.0, rng)
        assert all(kernel_std("cps", sig[s], sig[s + 1], 0.7) > 0 for s in steps)
    with pytest.raises(ValueError, match="do not fit"):
        branch_steps(0.5, 1, 2, (1, 2, 3), (1, 2, 3), 6.0, rng)


def test_tree_plan_has_27_leaves_and_trains_only_branch_edges():
    from alignbench.algorithms.tmpo import tree_plan

    plan = tree_plan(6, [2, 3, 4])
    assert plan.n_roots == 1 and plan.leaves_per_prompt() == 27
    assert [i for i, s in enumerate(plan.steps) if s.trained] == [2, 3, 4]
    assert all(s.kernel == "cps" and s.fanout == 3 and s.eta == 0.7 for s in plan.steps if s.trained)
    assert all(s.kernel == "ode" and s.fanout == 1 for i, s in enumerate(plan.steps) if i not in (2, 3, 4))
    # nodes per depth 1,1,1,3,9,27 → NFE 42; edges 3 + 9 + 27
    assert plan.nfe_per_prompt() == 1 + 1 + 1 + 3 + 9 + 27 and plan.edges_per_prompt() == 39
    roots = tree_plan(6, [1, 3, 4])  # a first branch point at step <= 1 becomes 3 independent roots
    assert roots.n_roots == 3 and roots.leaves_per_prompt() == 27
    assert [i for i, s in enumerate(roots.steps) if s.trained] == [3, 4]
    assert roots.nfe_per_prompt() == 3 + 3 + 3 + 3 + 9 + 27  # nodes evaluated at steps 0..5
    with pytest.raises(ValueError, match="sorted, distinct"):
        tree_plan(6, [3, 3, 4])


def test_tree_plan_takes_one_fan_out_per_branch_point():
    from alignbench.algorithms.tmpo import tree_plan

    wide = tree_plan(6, [0, 3], children=(9, 3), root_threshold=-1)
    assert wide.n_roots == 1 and wide.leaves_per_prompt() == 27
    assert [(i, s.fanout) for i, s in enumerate(wide.steps) if s.trained] == [(0, 9), (3, 3)]
    # nodes per step 1, 9, 9, 9, 27, 27 → NFE 82; edges 9 + 27
    assert wide.nfe_per_prompt() == 1 + 9 + 9 + 9 + 27 + 27 and wide.edges_per_prompt() == 36
    roots = tree_plan(6, [1, 3], children=(9, 3))  # the first point becomes 9 independent roots
    assert roots.n_roots == 9 and roots.leaves_per_prompt() == 27 and roots.edges_per_prompt() == 27
    with pytest.raises(ValueError, match="2 fan-outs for 3 branch points"):
        tree_plan(6, [0, 2, 4], children=(9, 3))


@pytest.mark.parametrize("children", [(9, 3), (9, 1, 3), 1])
def test_tmpo_children_per_branch_point_must_match_the_branch_points(children):
    from alignbench.algorithms.tmpo import TMPO

    from alignbench.errors import ConfigError
    from alignbench.training.algorithm import Context, Progress

    ctx = Context(num_steps=10, sigmas=np.linspace(1, 0, 11).tolist(), group_size=27, iterations=10)
    cfg = {"s_min": 0, "s_max": 8, "early": (0, 2, 4), "late": (0, 3, 6)}
    with pytest.raises(ConfigError, match="algo.children"):
        TMPO(TMPO.Config(**cfg, children=children), ctx)
    wide = TMPO(TMPO.Config(**{**cfg, "early": (0, 3), "late": (0, 4)}, children=(9, 3), root_threshold=-1), ctx)
    plan = wide.plan(Progress(iteration=0, total=10), np.random.default_rng(0))
    assert plan.leaves_per_prompt() == 27 and [s.fanout for s in plan.steps if s.trained] == [9, 3]
