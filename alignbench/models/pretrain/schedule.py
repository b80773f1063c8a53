"""The learning-rate schedules of pretraining (cosine and warm-up–stable–decay)."""

import math


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine",
          decay_fraction: float = 0.2) -> float:
    """Learning rate at ``step`` (counted from 0) of ``total``: linear warm-up to ``peak``, then

    * ``cosine``: cosine decay to 10% of ``peak`` at ``total``;
    * ``wsd`` (warm-up–stable–decay; Hu et al. 2024, MiniCPM §4): ``peak`` until
      ``total·(1 − decay_fraction)``, then linear decay to 0 at ``total``. Runs of different lengths
      share their stable part, so their learning curves compare.

    Raises:
        ValueError: unknown ``schedule``.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "wsd":
        start = total * (1 - decay_fraction)
        return peak if step < start else peak * max(0.0, (total - step) / max(1e-9, total - start))
    if schedule != "cosine":
        raise ValueError(f"unknown schedule '{schedule}'; allowed: cosine, wsd")
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac))))
