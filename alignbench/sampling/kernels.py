"""Step kernels of flow-matching samplers with Gaussian log-probabilities (specs/algorithms.md §0).

Conventions: σ = 1 is noise, σ = 0 is data; ``v`` is the predicted velocity (≈ x₁ − x₀); one step
goes from σ to σ' < σ with Δ = σ' − σ < 0; x̂₀ = x − σ·v, x̂₁ = x + (1 − σ)·v. A stochastic kernel
returns x' = μ + s·ξ, ξ ~ N(0, I), with the per-sample std s, and

    log π(x' | x) = −‖x' − μ‖² / (2 s²) − (d/2)·log(2π s²)

over the d latent elements, divided by d for ``reduction="mean"`` (the released codes' convention,
to which their PPO clip ranges are calibrated) or not for ``"sum"``. Gradients flow only through μ
(through ``v``); a given ``sample`` is detached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

REDUCTIONS = ("mean", "sum")


@dataclass
class StepResult:
    """One step of a kernel.

    Attributes:
        sample: x', float [N, ...].
        mean: μ, float [N, ...] (for ``ode``, equal to ``sample``).
        std: s, float [N] (0 for ``ode``).
        log_prob: log π(x'|x), float [N], or None for the deterministic ``ode`` step.
    """

    sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor | None


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      reduction: str = "mean") -> torch.Tensor:
    """log N(sample; mean, std²·I) per row, float [N], mean or sum over the d elements of a row.

    Args:
        sample, mean: float [N, ...]; ``sample`` is detached.
        std: float [N] (or scalar), > 0.

    Raises:
        ValueError: unknown ``reduction`` (allowed: mean, sum).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction '{reduction}' is not allowed; allowed: {', '.join(REDUCTIONS)}")
    n = sample.shape[0]
    s = torch.as_tensor(std, dtype=mean.dtype, device=mean.device).expand(n).reshape(n, *[1] * (mean.dim() - 1))
    elem = -((sample.detach() - mean) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    elem = elem.reshape(n, -1)
    return elem.mean(1) if reduction == "mean" else elem.sum(1)


def _rows(value: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """σ as float [N, 1, …] broadcastable against ``x`` (scalar or per-row input)."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]).reshape(x.shape[0], *[1] * (x.dim() - 1))


def _finish(mean: torch.Tensor, std: torch.Tensor, sample: torch.Tensor | None, noise: torch.Tensor | None,
            generator: torch.Generator | None, reduction: str) -> StepResult:
    if sample is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device="cpu", dtype=torch.float32)
        sample = mean.detach() + _rows(std, mean).detach() * noise.to(mean.device, mean.dtype)
    std_rows = std.expand(mean.shape[0]).to(mean.dtype)
    return StepResult(sample.detach(), mean, std_rows, gaussian_log_prob(sample, mean, std_rows, reduction))


def ode_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, **_) -> StepResult:
    """Euler ODE step x' = x + Δ·v (deterministic: no log-prob, never trained)."""
    delta = _rows(sigma_next, x) - _rows(sigma, x)
    out = x + delta * v
    return StepResult(out, out, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), None)


def flow_sde_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, eta: float, *,
                  sample: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, reduction: str = "mean") -> StepResult:
    """Flow-GRPO's SDE step (Liu et al. 2025, eq. 8–9; specs/algorithms.md §0 ``flow_sde``).

    a = η·√(σ / (1 − σ)) (at σ = 1 the denominator uses σ' = σ₁, the next grid point),
    s = a·√(−Δ), μ = x + Δ·[v + a²/(2σ)·(x + (1 − σ)·v)].

    Args:
        x, v: float [N, ...] latents and velocity at σ.
        sigma, sigma_next: scalars or [N] (σ > σ').
        eta: noise level η ≥ 0.
        sample: recompute the log-prob of this stored x' instead of drawing one.
        noise: ξ to use instead of drawing (float [N, ...]).
    """
    s_ = _rows(sigma, x)
    d = _rows(sigma_next, x) - s_
    denom = torch.where(s_ >= 1, 1 - _rows(sigma_next, x), 1 - s_)
    a = eta * torch.sqrt(s_ / denom)
    mean = x + d * (v + a**2 / (2 * s_) * (x + (1 - s_) * v))
    std = (a * torch.sqrt(-d)).reshape(-1)
    return _finish(mean, std, sample, noise, generator, reduction)


def cps_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, eta: float, *,
             sample: torch.Tensor | None = None, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None, reduction: str = "mean") -> StepResult:
    """Coefficients-preserving sampling step (Wang & Yu 2025; specs/algorithms.md §0 ``cps``).

    s = σ'·sin(ηπ/2), μ = (1 − σ')·x̂₀ + √(σ'² − s²)·x̂₁. s = 0 on a step ending at σ' = 0: the
    log-prob is then undefined (returned as NaN) and the step must not be trained or branched.
    """
    s_, sn = _rows(sigma, x), _rows(sigma_next, x)
    x0 = x - s_ * v
    x1 = x + (1 - s_) * v
    std_rows = sn * math.sin(eta * math.pi / 2)
    mean = (1 - sn) * x0 + torch.sqrt((sn**2 - std_rows**2).clamp_min(0)) * x1
    std = std_rows.reshape(-1)
    if bool((std <= 0).any()):
        out = mean.detach() if sample is None else sample.detach()
        return StepResult(out, mean, std, torch.full((x.shape[0],), float("nan"), dtype=x.dtype, device=x.device))
    return _finish(mean, std, sample, noise, generator, reduction)


def dance_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, eta: float, *,
               sample: torch.Tensor | None = None, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None, reduction: str = "mean") -> StepResult:
    """DanceGRPO's SDE step (Xue et al. 2025; specs/algorithms.md §0 ``dance``).

    s = η·√(−Δ), μ = x + Δ·v + ½η²·Δ·(x − (1 − σ)·x̂₀)/σ².
    """
    s_ = _rows(sigma, x)
    d = _rows(sigma_next, x) - s_
    x0 = x - s_ * v
    mean = x + d * v + 0.5 * eta**2 * d * (x - (1 - s_) * x0) / s_**2
    std = (eta * torch.sqrt(-d)).reshape(-1)
    return _finish(mean, std, sample, noise, generator, reduction)


def dpmpp_2m_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, *_, history=None, **__) -> StepResult:
    """Deterministic DPM-Solver++(2M) step (Lu et al. 2022, "DPM-Solver++", Alg. 2) for rectified
    flow, written with α = 1 − σ, λ = log(α/σ) and the data prediction x̂₀ = x − σ·v:

        h = λ' − λ,   x' = (σ'/σ)·x − α'·(e^{−h} − 1)·D,
        D = (1 + 1/(2r))·x̂₀ − 1/(2r)·x̂₀_prev with r = (λ − λ_prev)/h   (second order), or D = x̂₀
        (first order: no history, or the last step to σ' = 0, diffusers' ``lower_order_final``).

    The first-order update is exactly the Euler step. No log-prob (never trained).

    Args:
        history: ``(x̂₀_prev float [N, ...], σ_prev)`` of the previous solver step, or None.
    """
    s_, sn = float(sigma), float(sigma_next)
    x0 = x - s_ * v
    if sn <= 0:
        return StepResult(x0, x0, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), None)

    def lam(t: float) -> float:
        return math.log((1 - t) / t)

    h = lam(sn) - lam(s_)
    d = x0
    if history is not None:
        x0_prev, s_prev = history
        r = (lam(s_) - lam(float(s_prev))) / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev.to(x0)
    out = (sn / s_) * x - (1 - sn) * math.expm1(-h) * d
    return StepResult(out, out, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), None)


KERNELS: dict[str, Callable[..., StepResult]] = {
    "ode": ode_step, "flow_sde": flow_sde_step, "cps": cps_step, "dance": dance_step, "dpmpp2m": dpmpp_2m_step}
#: deterministic kernels (no noise, never trained or branched)
DETERMINISTIC = ("ode", "dpmpp2m")
#: kernels that use the previous step's data prediction (the executor passes ``history``)
MULTISTEP = ("dpmpp2m",)


def kernel_std(kernel: str, sigma: float, sigma_next: float, eta: float) -> float:
    """The std s a kernel injects on the step σ → σ' (0 for ``ode``); used to forbid branching
    where s = 0."""
    x = torch.zeros(1, 1, dtype=torch.float64)
    if kernel in DETERMINISTIC:
        return 0.0
    return float(KERNELS[kernel](x, x, sigma, sigma_next, eta, noise=torch.zeros(1, 1)).std[0])
