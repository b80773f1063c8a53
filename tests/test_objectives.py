"""Shared objectives: known answers (specs/algorithms.md §0)."""

from __future__ import annotations

import pytest
import torch

from alignbench.training.objectives import clipped_surrogate, flow_sde_kl, group_zscore, path_edge_weights


def test_group_zscore_known_values():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0])
    g = torch.tensor([0, 0, 0, 1, 1])
    a = group_zscore(r, g)
    std = (2 / 3) ** 0.5
    assert torch.allclose(a[:3], torch.tensor([-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4)]))
    assert torch.all(a[3:] == 0)  # a group with equal rewards carries no signal
    glob = group_zscore(r, g, global_std=True)
    assert glob[0].item() == pytest.approx(-1 / (r.std(unbiased=False).item() + 1e-4), rel=1e-5)


def test_clipped_surrogate_is_minus_mean_advantage_at_ratio_one_and_clips():
    adv = torch.tensor([1.0, -2.0, 7.0])
    lp = torch.zeros(3, requires_grad=True)
    loss, stats = clipped_surrogate(lp, torch.zeros(3), adv, clip_range=0.2)
    assert loss.item() == pytest.approx(-(1 - 2 + 5) / 3)  # advantage clipped to 5
    loss.backward()
    assert torch.allclose(lp.grad, -torch.tensor([1.0, -2.0, 5.0]) / 3)
    assert stats["clip_frac"] == 0 and stats["approx_kl"] == 0
    # ratio 1.5 with positive advantage: clipped at 1.2, no gradient
    lp2 = torch.log(torch.tensor([1.5])).requires_grad_(True)
    loss2, stats2 = clipped_surrogate(lp2, torch.zeros(1), torch.tensor([1.0]), clip_range=0.2)
    assert loss2.item() == pytest.approx(-1.2) and stats2["clip_frac"] == 1.0
    loss2.backward()
    assert lp2.grad.item() == 0


def test_flow_sde_kl_known_value():
    m = torch.zeros(1, 4)
    ref = torch.full((1, 4), 0.1)
    kl = flow_sde_kl(m, ref, torch.tensor([0.5]), torch.tensor([0.4]), eta=0.9)
    assert kl.item() == pytest.approx(0.01 / (2 * 0.81 * 1.0))


def test_micro_batched_path_surrogate_gradient_equals_the_full_batch_gradient():
    torch.manual_seed(0)
    theta = torch.randn(6, requires_grad=True)
    incidence = torch.tensor([[1, 0, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1]],
                             dtype=torch.float32)
    old = torch.randn(6)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0])

    def path_loss(edge_lp):
        log_ratio = incidence @ (edge_lp - old)
        r = torch.exp(log_ratio)
        return -torch.minimum(r * adv, r.clamp(0.8, 1.2) * adv).mean()

    edge_lp = theta * 0.3  # stands for log π_θ of each edge
    full = torch.autograd.grad(path_loss(edge_lp), theta)[0]
    # pass 1: d(loss)/d(path log-prob) on detached values
    path_lp = (incidence @ edge_lp.detach()).requires_grad_(True)
    log_ratio = path_lp - incidence @ old
    r = torch.exp(log_ratio)
    loss = -torch.minimum(r * adv, r.clamp(0.8, 1.2) * adv).mean()
    dpath = torch.autograd.grad(loss, path_lp)[0]
    w = path_edge_weights(incidence, dpath)
    # pass 2: edge micro-batches of 2
    grad = torch.zeros(6)
    for chunk in torch.arange(6).split(2):
        g = torch.autograd.grad((w[chunk] * (theta[chunk] * 0.3)).sum(), theta)[0]
        grad += g
    assert torch.allclose(grad, full, atol=1e-6)


def test_weighted_group_zscore_sums_per_reward_zscores_and_skips_zero_weights():
    from alignbench.training.objectives import group_zscore, weighted_group_zscore

    g = torch.tensor([0, 0, 1, 1])
    a, b = torch.tensor([1.0, 0.0, 2.0, 4.0]), torch.tensor([0.0, 3.0, 1.0, 1.0])
    out = weighted_group_zscore({"a": a, "b": b, "c": torch.full((4,), float("nan"))}, {"a": 0.25, "b": 0.75, "c": 0.0}, g)
    torch.testing.assert_close(out, 0.25 * group_zscore(a, g) + 0.75 * group_zscore(b, g))
    # by hand: within each pair the z-scores are ±1 (up to the 1e-4 guard); b's second group is constant → 0
    torch.testing.assert_close(out, torch.tensor([0.25 - 0.75, -0.25 + 0.75, -0.25, 0.25]), atol=1e-3, rtol=0)
