"""GenEval reward on ShapesWorld: the rule-based detector followed by the shared rule engine
(:class:`~alignbench.rewards.geneval.GenEvalReward`)."""

from __future__ import annotations

from .geneval import GenEvalReward


def shapes_geneval_reward() -> GenEvalReward:
    """GenEval on ShapesWorld: rule-based detector + GenEval rules (accuracy, strict, partial score)."""
    from ..world.detector import ShapesDetector
    from ..world.palette import CLASSES

    return GenEvalReward(ShapesDetector(), CLASSES)


shapes_geneval_reward.description = "GenEval rules over the exact ShapesWorld detector (accuracy, strict, partial score)"
