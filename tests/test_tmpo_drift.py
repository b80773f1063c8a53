"""Why TMPO's reward turned down with several inner updates (issue 32), checked by hand on a tiny tree.

One branch point with three children x_i = μ_old + s·ξ_i (d elements each), one trained edge per
leaf. With the paper's advantage the group mean of A = log q − log p is negative (−KL(u‖q) when p is
uniform), and with RatioNorm the path ratio r̃_i = exp(mean_d(ξ_i·δ)/s) does not see the −‖δ‖²/(2s²)
part of the Gaussian log-ratio, δ = μ_θ − μ_old. The gradient of −mean_i A_i·r̃_i with respect to
μ_θ is then −(1/K)·Σ_i A_i·r̃_i·(s·ξ_i − δ)/(d·s²): for A ≡ −c its δ part points along +δ after a
descent step, i.e. every inner update after the first pushes μ_θ further from μ_old whatever the
rewards, and the clip (on r̃) never stops it. Centring A within the group (``center``) removes it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from alignbench.algorithms.tmpo import TMPO, softmax_tb_advantage

from alignbench.sampling.kernels import gaussian_log_prob
from alignbench.training.algorithm import Context, PathBatch


def _tmpo(**over):
    ctx = Context(num_steps=10, sigmas=np.linspace(1, 0, 11).tolist(), group_size=3, iterations=10)
    return TMPO(TMPO.Config(**{"s_min": 0, "s_max": 8, "early": (0, 2, 4), "late": (0, 3, 6), **over}), ctx)


def test_binary_rewards_give_the_paper_advantage_a_negative_group_mean_by_hand():
    # rewards [1, 0, 0]: mean 1/3, population std √2/3; z = (R − mean)/(std + 1e-4)
    std = math.sqrt(2) / 3
    z = [(1 - 1 / 3) / (std + 1e-4), (0 - 1 / 3) / (std + 1e-4), (0 - 1 / 3) / (std + 1e-4)]
    beta = 2.0
    lse = math.log(sum(math.exp(beta * v) for v in z))
    # p uniform (equal path log-probs): A_i = β·z_i − lse + log 3
    by_hand = [beta * v - lse + math.log(3) for v in z]
    a = softmax_tb_advantage(torch.tensor(z), torch.full((3,), -1.7), beta)
    assert a.tolist() == pytest.approx(by_hand, abs=1e-5)
    assert sum(by_hand) / 3 == pytest.approx(-(lse - math.log(3)), abs=1e-9)  # −KL(u‖q), here −0.96
    assert sum(by_hand) / 3 < -0.9


@pytest.mark.parametrize("center", [False, True])
def test_path_loss_gradient_on_a_three_child_branch_matches_the_hand_formula(center):
    torch.manual_seed(0)
    d, s, k = 16, 0.3, 3
    mu_old = torch.randn(d, dtype=torch.float64)
    xi = torch.randn(k, d, dtype=torch.float64)
    x = mu_old + s * xi
    delta = 0.05 * torch.randn(d, dtype=torch.float64)  # θ after an earlier inner update
    mu = (mu_old + delta).clone().requires_grad_(True)
    lp_old = gaussian_log_prob(x, mu_old.expand(k, d), torch.tensor(s, dtype=torch.float64))
    lp = gaussian_log_prob(x, mu.expand(k, d), torch.tensor(s, dtype=torch.float64))
    ratio_norm = ((mu.detach() - mu_old) ** 2).mean() / (2 * s**2)
    adv_raw = torch.tensor([1.2, -1.5, -1.5], dtype=torch.float64)  # group mean −0.6
    algo = _tmpo(ratio="paper", clip_range=10.0, center=center)
    adv = adv_raw - adv_raw.mean() if center else adv_raw
    batch = PathBatch(lp - lp_old, ratio_norm.expand(k), adv, torch.zeros(k, dtype=torch.long))
    loss, _ = algo.path_loss(batch)
    (grad,) = torch.autograd.grad(loss, mu)
    # by hand: log r̃_i = mean_d(ξ_i·δ)/s; ∂L/∂μ = −(1/K) Σ_i A_i r̃_i (s ξ_i − δ)/(d s²)
    r = torch.exp((xi * delta).mean(1) / s)
    by_hand = -(1 / k) * sum(adv[i] * r[i] * (s * xi[i] - delta) / (d * s**2) for i in range(k))
    assert torch.allclose(grad, by_hand, rtol=1e-9, atol=1e-12)


def test_a_constant_negative_advantage_pushes_the_policy_away_from_the_old_one_and_centring_stops_it():
    torch.manual_seed(1)
    d, s, k = 64, 0.3, 3
    mu_old = torch.zeros(d, dtype=torch.float64)
    xi = torch.randn(k, d, dtype=torch.float64)
    x = mu_old + s * xi
    for center, moves_away in ((False, True), (True, False)):
        algo = _tmpo(ratio="paper", clip_range=0.2, center=center)
        mu = (mu_old + 0.01 * torch.randn(d, dtype=torch.float64)).requires_grad_(True)
        adv = torch.full((k,), -1.0, dtype=torch.float64)  # every leaf tied: A = −KL(u‖q), no reward signal
        if center:
            adv = adv - adv.mean()
        dist0 = float((mu.detach() - mu_old).norm())
        for _ in range(50):  # plain gradient descent, lr 0.05: inner updates on one rollout
            lp_old = gaussian_log_prob(x, mu_old.expand(k, d), torch.tensor(s, dtype=torch.float64))
            lp = gaussian_log_prob(x, mu.expand(k, d), torch.tensor(s, dtype=torch.float64))
            rn = ((mu.detach() - mu_old) ** 2).mean() / (2 * s**2)
            loss, _ = algo.path_loss(PathBatch(lp - lp_old, rn.expand(k), adv, torch.zeros(k, dtype=torch.long)))
            (g,) = torch.autograd.grad(loss, mu)
            with torch.no_grad():
                mu -= 0.05 * g * d  # d·lr so that the per-element mean reduction moves μ visibly
        dist = float((mu.detach() - mu_old).norm())
        if moves_away:
            assert dist > 3 * dist0  # repelled from μ_old although no leaf is better than another
        else:
            assert dist == pytest.approx(dist0, rel=1e-12)  # centred: all-tied leaves give no gradient
