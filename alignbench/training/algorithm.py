"""The plugin contract (DESIGN.md "Plugin contract"): an algorithm is a rollout plan, an advantage
and, if it needs one, a loss; the engine (:mod:`alignbench.training.trainer`) does everything else.

An algorithm file defines a ``Config`` (a :class:`AlgorithmConfig` subclass whose fields carry the
paper defaults for FLUX.1-dev, each with its source), ``presets`` (overrides per model, e.g. the
embedded ``tiny-shapes`` backbone) and a class deriving from :class:`Algorithm`, registered with
``@register_algorithm("name")``. Nothing in the engine branches on an algorithm's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from ..config import StrictModel
from ..registry import algorithms
from ..sampling.plan import Rollout, RolloutPlan
from .objectives import clipped_surrogate_per_edge


class AlgorithmConfig(StrictModel):
    """Hyperparameters every algorithm has (the optimiser, the update and the EMA). Subclasses add
    their own fields and change defaults to their paper's."""

    lr: float = Field(3e-4, gt=0, description="AdamW learning rate")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="decay over the run's optimizer steps")
    lr_min_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up in optimizer steps")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    grad_clip: float = Field(1.0, gt=0, description="max global grad norm")
    inner_updates: int = Field(1, ge=1, description="optimizer steps per iteration on the same rollout")
    clip_range: float = Field(1e-4, gt=0, description="PPO clip range ε")
    kl_beta: float = Field(0.0, ge=0, description="KL coefficient β (KL to the reference policy)")
    logprob_reduction: Literal["mean", "sum"] = Field("mean", description="per-element mean (released codes) or sum")
    ema_decay: float = Field(0.9, ge=0, lt=1, description="EMA decay of the LoRA weights (eval/checkpoints only)")
    ema_every: int = Field(8, ge=1, description="EMA update interval in optimizer steps")
    micro_batch: int = Field(64, ge=1, description="trained edges per backward pass (exact micro-batching)")


@dataclass(frozen=True)
class Progress:
    """Where the run is: ``iteration`` (0-based) of ``total``; ρ = iteration / total."""

    iteration: int
    total: int

    @property
    def fraction(self) -> float:
        """Training progress in [0, 1): ``iteration / total``."""
        return self.iteration / max(self.total, 1)


@dataclass
class Context:
    """What an algorithm may know about the run when it is built.

    Attributes:
        num_steps: T, sampling steps of training rollouts.
        sigmas: float64 [T + 1] the backbone's σ grid for T steps.
        group_size: K, images (leaves) per prompt under the matched protocol.
        iterations: N, iterations of the run.
        task: the loaded task (reward keys, feature extractor for diversity-aware methods).
        reward_weights: {sub-score: weight} of the training reward.
        process_index, num_processes: this process and how many there are under ``accelerate launch``
            (0 and 1 in a one-process run). Each process holds ``prompts_per_iteration / num_processes``
            groups of every iteration.
        gather: concatenates a per-process tensor [n, ...] over the processes, in process order,
            giving [num_processes · n, ...] (the identity with one process). For statistics over the
            whole iteration's batch (e.g. GARDO's win rates); every process must call it.
    """

    num_steps: int
    sigmas: Sequence[float]
    group_size: int
    iterations: int
    task: Any = None
    reward_weights: dict[str, float] = field(default_factory=dict)
    process_index: int = 0
    num_processes: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)

    def local_slice(self, n: int) -> slice:
        """This process's rows in a :attr:`gather` result of per-process tensors of ``n`` rows each."""
        return slice(self.process_index * n, (self.process_index + 1) * n)


@dataclass
class Rewards:
    """The rewards of one iteration's leaves.

    Attributes:
        total: float [L] the training reward (weighted sum of ``scores`` with the task's weights).
        scores: {key: float [L]} every sub-score of the task's reward.
        group: long [L] group (prompt) index of each leaf.
        weights: {key: weight} that make ``total``.
        features: float [L, F] image features of the leaves (the model domain's extractor,
            :mod:`alignbench.metrics.features`) when the algorithm sets ``needs_features``; else None.
    """

    total: torch.Tensor
    scores: dict[str, torch.Tensor]
    group: torch.Tensor
    weights: dict[str, float]
    features: torch.Tensor | None = None


@dataclass
class PathBatch:
    """Per-leaf inputs of a path-level loss (all float [L]).

    Attributes:
        log_ratio: Σ_e M[l, e]·(log π_θ − log π_old) over the leaf's trained edges; the loss is
            differentiated with respect to this tensor (the engine then backpropagates exactly,
            edge batch by edge batch).
        ratio_norm: Σ_e M[l, e]·‖μ_θ − μ_old‖²/(2s²) (same reduction as the log-probs), detached:
            TMPO's RatioNorm term (specs/algorithms.md §5).
        advantages: the algorithm's per-leaf advantages.
        group: long [L] group index.
    """

    log_ratio: torch.Tensor
    ratio_norm: torch.Tensor
    advantages: torch.Tensor
    group: torch.Tensor


class Algorithm:
    """Base of algorithm plugins.

    Class attributes:
        name, description (one line), paper (citation), Config, presets ({model name: overrides}),
        group_size: images per prompt in the paper's own setting (None if the spec gives none); a
            run always uses the protocol's K.
        loss_level: ``"edge"`` (default: per-edge clipped surrogate, :meth:`edge_loss`) or ``"path"``
            (:meth:`path_loss` over whole trajectories, micro-batched exactly by the engine).
        advantage_level: :meth:`advantages` returns one value per ``"leaf"`` (default) or per ``"edge"``.
        needs_features: the engine fills ``Rewards.features`` (image features of every leaf).
        reference: ``"base"`` (default: the KL reference is the model with the adapter disabled) or
            ``"snapshot"`` (a frozen copy of the adapter, taken at the start and again whenever
            :meth:`reset_reference` says so; saved in checkpoints).

    Args:
        config: a validated ``Config``.
        ctx: the run's :class:`Context`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    group_size: ClassVar[int | None] = None
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    loss_level: ClassVar[Literal["edge", "path"]] = "edge"
    advantage_level: ClassVar[Literal["leaf", "edge"]] = "leaf"
    needs_features: ClassVar[bool] = False
    reference: ClassVar[Literal["base", "snapshot"]] = "base"

    def __init__(self, config: AlgorithmConfig, ctx: Context):
        self.config, self.ctx = config, ctx

    # -- the three pieces -----------------------------------------------------------------------
    def plan(self, progress: Progress, rng: np.random.Generator) -> RolloutPlan:
        """The rollout plan of this iteration (every prompt of the iteration uses it)."""
        raise NotImplementedError

    def advantages(self, rollout: Rollout, rewards: Rewards, progress: Progress) -> torch.Tensor:
        """Advantages: float [L] per leaf (the engine gives an edge the mean over the leaves below it,
        (Mᵀ·A)/(Mᵀ·1)) or, with ``advantage_level = "edge"``, float [E] per edge."""
        raise NotImplementedError

    def edge_loss(self, log_prob: torch.Tensor, old_log_prob: torch.Tensor,
                  advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-edge loss, float [E'] (the engine averages over all E edges), and stats. Default: the
        PPO clipped surrogate with ``config.clip_range`` (specs/algorithms.md §0)."""
        return clipped_surrogate_per_edge(log_prob, old_log_prob, advantages, self.config.clip_range)

    def edge_log_ratio_weights(self, rollout: Rollout) -> torch.Tensor:
        """Detached per-edge weights w_e inside a path's log-ratio Σ_e M[l, e]·w_e·(log π_θ − log π_old),
        float [E]; default 1 (the plain trajectory ratio)."""
        return torch.ones(rollout.sigma.shape[0])

    def path_loss(self, batch: PathBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of whole trajectories (``loss_level = "path"``), differentiable in
        ``batch.log_ratio``, and stats."""
        raise NotImplementedError

    # -- hooks ------------------------------------------------------------------------------------
    def kl_edge_weights(self, rollout: Rollout) -> torch.Tensor | None:
        """Per-edge weights g_e of the KL term, float [E], or None for all ones (called after
        :meth:`advantages` of the same iteration)."""
        return None

    def reset_reference(self, stats: dict[str, float], optimizer_steps: int) -> bool:
        """With ``reference = "snapshot"``: called after every iteration with its update statistics
        (``kl``: mean KL to the current reference) and the optimizer steps taken since the last
        reset; True makes the engine copy the current adapter into the reference."""
        return False

    def metrics(self, progress: Progress) -> dict[str, Any]:
        """Extra per-iteration metrics (e.g. the reward temperature)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a resume (e.g. adaptive gates); default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`state_dict` returned (called on resume); default: nothing."""
        pass

    def check_plan(self, plan: RolloutPlan) -> None:
        """Raise a one-line ``ConfigError`` if ``plan`` gives a group size other than the protocol's."""
        from ..errors import ConfigError

        leaves = plan.leaves_per_prompt()
        if leaves != self.ctx.group_size:
            raise ConfigError(f"protocol.group_size: {self.name}'s plan gives {leaves} images per prompt but the "
                              f"protocol asks for {self.ctx.group_size}; change one of them")


def register_algorithm(name: str):
    """Class decorator: register an :class:`Algorithm` under ``name`` (sets ``cls.name``)."""

    def deco(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = name
        algorithms.register(name, cls)
        return cls

    return deco


def leaf_to_edge(incidence: torch.Tensor, leaf_values: torch.Tensor) -> torch.Tensor:
    """Mean of an edge's descendant leaves: (Mᵀ·A) / (Mᵀ·1), float [E] (specs/algorithms.md §0).

    Args:
        incidence: float [L, E]; leaf_values: float [L].
    """
    counts = incidence.sum(0)
    return (incidence.t() @ leaf_values.to(incidence.dtype)) / counts.clamp_min(1)
