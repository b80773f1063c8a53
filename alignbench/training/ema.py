"""Exponential moving average of trained parameters (used for evaluation and checkpoints only;
specs/algorithms.md §0 "Training loop")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


class EMA:
    """θ_ema ← d·θ_ema + (1 − d)·θ every ``every`` optimizer steps (TMPO FLUX: d = 0.9 every 8).

    Args:
        params: the trained parameters (e.g. the LoRA weights).
        decay: d in [0, 1).
        every: update interval in optimizer steps.

    Raises:
        ValueError: decay outside [0, 1) or every < 1.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float, every: int = 1):
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.params = list(params)
        self.decay, self.every = decay, every
        self.shadow = [p.detach().clone() for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> bool:
        """Count one optimizer step; update the average when due. Returns whether it updated."""
        self.steps += 1
        if self.steps % self.every:
            return False
        for s, p in zip(self.shadow, self.params, strict=True):
            s.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        return True

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped(self) -> Iterator[None]:
        """Inside the block the parameters hold the EMA values; the trained values come back after."""
        saved = [p.detach().clone() for p in self.params]
        for p, s in zip(self.params, self.shadow, strict=True):
            p.copy_(s)
        try:
            yield
        finally:
            for p, v in zip(self.params, saved, strict=True):
                p.copy_(v)

    def state_dict(self) -> dict:
        return {"shadow": [s.clone() for s in self.shadow], "steps": self.steps, "decay": self.decay,
                "every": self.every}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = [s.clone() for s in state["shadow"]]
        self.steps, self.decay, self.every = state["steps"], state["decay"], state["every"]
