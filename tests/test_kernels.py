"""Step kernels: known answers and the ratio-is-one invariant (specs/algorithms.md §0)."""

from __future__ import annotations

import math

import pytest
import torch

from alignbench.sampling.kernels import KERNELS, gaussian_log_prob, kernel_std

STOCHASTIC = ("flow_sde", "cps", "dance")


def _xv(n=4, shape=(64, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g)


@pytest.mark.parametrize("kernel", STOCHASTIC)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_recomputed_log_prob_equals_stored_so_the_ratio_is_one(kernel, reduction):
    x, v = _xv()
    g = torch.Generator().manual_seed(1)
    for sigma, sigma_next in [(1.0, 0.9), (0.7, 0.55), (0.3, 0.2)]:
        step = KERNELS[kernel](x, v, sigma, sigma_next, 0.7, generator=g, reduction=reduction)
        again = KERNELS[kernel](x.clone(), v.clone(), sigma, sigma_next, 0.7, sample=step.sample, reduction=reduction)
        assert torch.allclose(again.log_prob, step.log_prob, atol=1e-5, rtol=0)
        assert torch.exp(again.log_prob - step.log_prob).sub(1).abs().max() < 1e-5


def test_gaussian_log_prob_matches_torch_distributions_and_mean_is_sum_over_d():
    x, mu = _xv(3, (10,))
    std = torch.tensor([0.5, 1.0, 2.0])
    ref = torch.distributions.Normal(mu, std[:, None]).log_prob(x).sum(1)
    assert torch.allclose(gaussian_log_prob(x, mu, std, "sum"), ref, atol=1e-5)
    assert torch.allclose(gaussian_log_prob(x, mu, std, "mean") * 10, ref, atol=1e-5)
    with pytest.raises(ValueError, match="allowed: mean, sum"):
        gaussian_log_prob(x, mu, std, "max")


def test_flow_sde_known_values_and_sigma_one_rule():
    x, v = torch.ones(1, 2), torch.full((1, 2), 2.0)
    s = KERNELS["flow_sde"](x, v, 0.5, 0.4, 0.9, noise=torch.zeros(1, 2))
    a = 0.9 * math.sqrt(0.5 / 0.5)
    assert s.std.item() == pytest.approx(a * math.sqrt(0.1))
    expect = 1 + (-0.1) * (2 + a**2 / (2 * 0.5) * (1 + 0.5 * 2))
    assert torch.allclose(s.mean, torch.full((1, 2), expect)) and torch.equal(s.sample, s.mean)
    # at sigma = 1 the denominator 1 - sigma uses the next grid point sigma_1
    s1 = KERNELS["flow_sde"](x, v, 1.0, 0.8, 0.9, noise=torch.zeros(1, 2))
    assert s1.std.item() == pytest.approx(0.9 * math.sqrt(1 / 0.2) * math.sqrt(0.2))
    # eta = 0 is the Euler step
    e = KERNELS["flow_sde"](x, v, 0.5, 0.4, 0.0, sample=x)
    assert torch.allclose(e.mean, KERNELS["ode"](x, v, 0.5, 0.4).sample)


def test_cps_stays_on_the_straight_line_for_an_exact_velocity():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    sigma, sigma_next = 0.6, 0.35
    x = (1 - sigma) * x0 + sigma * x1
    step = KERNELS["cps"](x, x1 - x0, sigma, sigma_next, 0.0)
    assert torch.allclose(step.mean, (1 - sigma_next) * x0 + sigma_next * x1, atol=1e-6)
    # with noise the coefficients are preserved: (1-σ')x0 + sqrt(σ'^2 - s^2) x1 + s ξ
    noisy = KERNELS["cps"](x, x1 - x0, sigma, sigma_next, 0.7)
    s = sigma_next * math.sin(0.7 * math.pi / 2)
    assert noisy.std[0].item() == pytest.approx(s)
    assert torch.allclose(noisy.mean, (1 - sigma_next) * x0 + math.sqrt(sigma_next**2 - s**2) * x1, atol=1e-6)


def test_cps_last_step_has_zero_std_and_no_log_prob():
    x, v = _xv(2, (4,))
    step = KERNELS["cps"](x, v, 0.1, 0.0, 0.7)
    assert torch.all(step.std == 0) and torch.isnan(step.log_prob).all()
    assert kernel_std("cps", 0.1, 0.0, 0.7) == 0.0 and kernel_std("flow_sde", 0.1, 0.0, 0.7) > 0
    assert kernel_std("ode", 0.5, 0.4, 0.7) == 0.0


@pytest.mark.parametrize("kernel", STOCHASTIC)
def test_samples_follow_the_stated_gaussian(kernel):
    x, v = torch.full((20000, 1), 0.3), torch.full((20000, 1), -1.0)
    g = torch.Generator().manual_seed(2)
    step = KERNELS[kernel](x, v, 0.6, 0.5, 0.8, generator=g)
    assert step.sample.mean().item() == pytest.approx(step.mean[0, 0].item(), abs=4 * step.std[0].item() / 141)
    assert step.sample.std().item() == pytest.approx(step.std[0].item(), rel=0.03)


def test_gradient_flows_through_the_mean_only():
    x, v = _xv(2, (6,))
    v.requires_grad_(True)
    step = KERNELS["flow_sde"](x, v, 0.5, 0.4, 0.7, generator=torch.Generator().manual_seed(0))
    assert not step.sample.requires_grad
    step.log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
