"""Multi-reward: a weighted sum of registered rewards (Flow-GRPO's multi-reward training, e.g.
PickScore + HPS v2.1 + ImageReward), declared in a task YAML as ``reward: {pickscore: 1.0, hpsv2: 1.0}``."""

from __future__ import annotations

from typing import Any

import torch

from .base import Reward


class MultiReward(Reward):
    """Keys: ``total`` = Σ_r w_r · (first sub-score of r), then every component's own keys (each
    component is reported). Metadata is validated by every component.

    Args:
        components: {name: (reward instance, weight)} in declaration order.

    Raises:
        ValueError: two components share a sub-score name, or no component is given.
    """

    metadata_format = ""

    def __init__(self, components: dict[str, tuple[Reward, float]]):
        if not components:
            raise ValueError("a multi-reward needs at least one component")
        self.components = components
        keys: list[str] = ["total"]
        for name, (reward, _) in components.items():
            for k in reward.keys:
                if k in keys:
                    raise ValueError(f"reward '{name}': sub-score '{k}' is also another component's")
                keys.append(k)
        self.keys = tuple(keys)

    def validate_metadata(self, record: dict, where: str) -> None:
        for reward, _ in self.components.values():
            reward.validate_metadata(record, where)

    def score(self, images: Any, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        total = None
        for reward, weight in self.components.values():
            s = reward.score(images, prompts, metadata)
            out.update(s)
            part = weight * s[reward.keys[0]].float()
            total = part if total is None else total + part
        return {"total": total, **out}
