"""The update's memory plan (issue 19, item 3): choose the micro-batch — trained transitions per
backward pass — so that the update's peak GPU memory stays within ``protocol.update_memory_gb``.

Micro-batching is exact (``update.py``: the gradient of every micro-batch is the corresponding
share of the full-batch gradient), so the plan changes memory and time, never results. The peak is
modelled as linear in the micro-batch size n: peak(n) = base + n·per_edge, with base (weights,
optimizer state, the rollout) and per_edge (one transition's activations and their gradients)
measured on the first update from two probe passes of 1 and 2 transitions.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

GIB = 2**30


def supported(device: torch.device) -> bool:
    """Whether peak memory can be measured on ``device`` (CUDA only)."""
    return device.type == "cuda"


def plan_micro_batch(budget_bytes: float, base_bytes: float, per_edge_bytes: float, n_edges: int) -> int:
    """The largest micro-batch n ≤ ``n_edges`` with base + n·per_edge ≤ budget.

    Raises:
        UserError: not even one transition fits (names ``protocol.update_memory_gb`` and the need).
    """
    per_edge = max(float(per_edge_bytes), 1.0)
    n = math.floor((budget_bytes - base_bytes) / per_edge)
    if n < 1:
        need = (base_bytes + per_edge) / GIB
        raise UserError(f"protocol.update_memory_gb: {budget_bytes / GIB:.1f} GiB cannot hold one trained transition "
                        f"of this model (needs {need:.1f} GiB); raise it, or turn on "
                        "protocol.gradient_checkpointing")
    return int(min(n, n_edges))


def measure_update_memory(backbone, rollout, embeds, reduction: str) -> tuple[float, float]:
    """(base, per_edge) bytes of the update on CUDA, from the peaks of a forward + backward of the
    recomputed log-probs of 1 and of 2 transitions (gradients discarded afterwards)."""
    from ..sampling.plan import recompute_log_prob

    device = backbone.device
    nfe = backbone.nfe  # the probe passes are not part of the iteration's counted work
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        lp, _ = recompute_log_prob(backbone, rollout, embeds, torch.arange(n), reduction)
        lp.sum().backward()
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device))
        for p in backbone.lora_parameters():
            p.grad = None
    backbone.nfe = nfe
    per_edge = max(peaks[1] - peaks[0], 1)
    return float(peaks[0] - per_edge), float(per_edge)
