"""Rollout plans and the tree executor (specs/algorithms.md §0, "Rollout forest").

A prompt's rollout is a forest: ``n_roots`` initial noises (independent, or one shared), then at
every step a kernel, a noise level η and a fan-out k (1 = chain). Every *trained* transition is an
edge; a leaf's path is the list of its edges, stored as the incidence matrix M [leaves × edges].
All nodes of one depth (over every prompt of the batch) go through the transformer in one batched
forward, so a shared prefix costs one forward per node, not per leaf.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .kernels import DETERMINISTIC, KERNELS, MULTISTEP, kernel_std


@dataclass(frozen=True)
class StepSpec:
    """One sampling step of a plan.

    Attributes:
        kernel: ``ode``, ``flow_sde``, ``cps`` or ``dance``.
        eta: noise level η of a stochastic kernel.
        fanout: children per node (1 = chain); > 1 only where the kernel injects noise.
        trained: whether this step's transitions are edges of the rollout (enter log-probs and the
            gradient); only stochastic steps can be trained.
    """

    kernel: str = "ode"
    eta: float = 0.0
    fanout: int = 1
    trained: bool = False


@dataclass
class RolloutPlan:
    """Roots and per-step specs for every prompt of an iteration.

    Attributes:
        n_roots: initial noises per prompt.
        shared_noise: the roots share one initial noise (Flow-GRPO's ``same_latent``); they are then
            executed as one root whose first stochastic step fans out ``n_roots`` times more.
        steps: one :class:`StepSpec` per sampling step (T = len(steps)).
        sigmas: the σ grid, T + 1 values from 1 down to 0; None = the backbone's grid for T steps
            (a plan sets its own for a compressed segment, e.g. MixGRPO-Flash).
    """

    n_roots: int
    steps: list[StepSpec]
    shared_noise: bool = False
    sigmas: tuple[float, ...] | None = None

    def normalized(self) -> RolloutPlan:
        """The equivalent plan without shared-noise roots (prefix shared up to the first stochastic
        step, so those steps are computed once)."""
        if not self.shared_noise or self.n_roots == 1:
            return RolloutPlan(self.n_roots, list(self.steps), False, self.sigmas)
        steps = list(self.steps)
        for i, s in enumerate(steps):
            if s.kernel not in DETERMINISTIC:
                steps[i] = StepSpec(s.kernel, s.eta, s.fanout * self.n_roots, s.trained)
                return RolloutPlan(1, steps, False, self.sigmas)
        raise ValueError("shared_noise roots need a stochastic step, or all their leaves are identical")

    def leaves_per_prompt(self) -> int:
        """Number of leaves (final images) per prompt: n_roots · Π k_i."""
        return self.n_roots * math.prod(s.fanout for s in self.steps)

    def nfe_per_prompt(self) -> int:
        """Transformer forwards (rows) per prompt: Σ_i (nodes at depth i), with prefix sharing."""
        p = self.normalized()
        nodes, total = p.n_roots, 0
        for s in p.steps:
            total += nodes
            nodes *= s.fanout
        return total

    def edges_per_prompt(self) -> int:
        """Trained transitions per prompt: Σ over trained steps of the children created there."""
        p = self.normalized()
        nodes, total = p.n_roots, 0
        for s in p.steps:
            nodes *= s.fanout
            total += nodes if s.trained else 0
        return total

    def update_rows_per_prompt(self, share_nodes: bool = True) -> int:
        """Transformer rows per prompt of one pass of the update over all trained edges: the start
        nodes of the trained steps (one row per node, shared by its children) with ``share_nodes``,
        else one row per trained edge (:meth:`edges_per_prompt`)."""
        if not share_nodes:
            return self.edges_per_prompt()
        p = self.normalized()
        nodes, total = p.n_roots, 0
        for s in p.steps:
            total += nodes if s.trained else 0
            nodes *= s.fanout
        return total

    def validate(self, sigmas: Sequence[float]) -> None:
        """Check the plan against a σ grid.

        Raises:
            ValueError: wrong number of steps, unknown kernel, fan-out < 1, a trained ``ode`` step, or
                a branch / trained step where the kernel's std is 0 (e.g. ``cps`` on the last step).
        """
        if len(sigmas) != len(self.steps) + 1:
            raise ValueError(f"plan has {len(self.steps)} steps but the σ grid has {len(sigmas) - 1}")
        if self.n_roots < 1:
            raise ValueError(f"n_roots must be >= 1, got {self.n_roots}")
        for i, s in enumerate(self.steps):
            if s.kernel not in KERNELS:
                raise ValueError(f"step {i}: unknown kernel '{s.kernel}'; allowed: {', '.join(KERNELS)}")
            if s.fanout < 1:
                raise ValueError(f"step {i}: fanout must be >= 1, got {s.fanout}")
            std = kernel_std(s.kernel, float(sigmas[i]), float(sigmas[i + 1]), s.eta)
            if (s.fanout > 1 or s.trained) and std <= 0:
                what = "branch" if s.fanout > 1 else "train"
                raise ValueError(f"step {i}: cannot {what} on a step whose {s.kernel} std is 0 "
                                 f"(σ {float(sigmas[i]):.3f} → {float(sigmas[i + 1]):.3f}, η {s.eta})")


@dataclass
class Rollout:
    """What a rollout hands to rewards, advantages and the update.

    Shapes: P prompts, L leaves, E trained edges, latent [T, C].

    Attributes:
        leaves: float [L, T, C] final latents, grouped by prompt (leaf order within a prompt is
            depth-first over the tree).
        leaf_prompt: long [L] prompt index of each leaf.
        x, x_next: float [E, T, C] edge start and end latents (detached).
        sigma, sigma_next: float [E].
        step: long [E] step index of each edge (its kernel and η come from the plan).
        log_prob: float [E] log π_old(x_next | x).
        mean: float [E, T, C] μ_old.
        edge_prompt: long [E].
        incidence: float [L, E] M[l, e] = 1 if edge e lies on leaf l's path.
        nfe: transformer rows evaluated.
        parent: long [E] id of each edge's start node (unique within the rollout): the children of
            one branch point share it, and so share x, σ and prompt, hence the velocity
            (:func:`recompute_log_prob` evaluates it once per node). None: every edge its own node.
    """

    leaves: torch.Tensor
    leaf_prompt: torch.Tensor
    x: torch.Tensor
    x_next: torch.Tensor
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    step: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    edge_prompt: torch.Tensor
    incidence: torch.Tensor
    nfe: int
    plan: RolloutPlan = field(repr=False, default=None)
    parent: torch.Tensor | None = None

    def path_log_prob(self, edge_log_prob: torch.Tensor | None = None) -> torch.Tensor:
        """log P(τ_l) = Σ_e M[l, e]·log π_e, float [L] (the stored old log-probs by default)."""
        lp = self.log_prob if edge_log_prob is None else edge_log_prob
        return self.incidence @ lp


NoiseFn = Callable[[int, int, tuple[int, ...]], torch.Tensor]


@torch.no_grad()
def execute(backbone, plan: RolloutPlan, embeds, root_seeds: Sequence[Sequence[int]],
            generator: torch.Generator | None = None, reduction: str = "mean",
            batch_size: int = 256, noise_fn: NoiseFn | None = None) -> Rollout:
    """Run ``plan`` for P prompts, depth by depth, one batched forward per depth (chunked by
    ``batch_size`` rows).

    Args:
        backbone: adapter with ``sigmas``, ``initial_noise``, ``velocity`` (see
            :class:`~alignbench.models.backbone.FluxBackbone`).
        embeds: :class:`~alignbench.models.backbone.PromptEmbeds` with one row per prompt.
        root_seeds: per prompt, ``n_roots`` initial-noise seeds (one if ``plan.shared_noise``).
        generator: source of the kernels' noise ξ (drawn child by child in node order).
        noise_fn: instead of ``generator``: ``noise_fn(prompt, step, path)`` gives ξ [T, C] for the
            child whose branch choices from its root are ``path`` (used to replay paths in tests).

    Raises:
        ValueError: the plan does not fit the backbone's σ grid (see :meth:`RolloutPlan.validate`).
    """
    norm = plan.normalized()
    sigmas = (torch.tensor(norm.sigmas, dtype=torch.float64) if norm.sigmas is not None
              else backbone.sigmas(len(norm.steps)))
    norm.validate(sigmas.tolist())
    n_prompts = len(root_seeds)
    # nodes: latent, prompt index, branch path, list of edge ids on its path
    seeds = [s for p in range(n_prompts) for s in list(root_seeds[p])[: norm.n_roots]]
    if len(seeds) != n_prompts * norm.n_roots:
        raise ValueError(f"need {norm.n_roots} root seed(s) per prompt")
    x = backbone.initial_noise(seeds)
    prompt = torch.arange(n_prompts).repeat_interleave(norm.n_roots)
    paths: list[tuple[int, ...]] = [(r,) for _ in range(n_prompts) for r in range(norm.n_roots)]
    edge_lists: list[list[int]] = [[] for _ in seeds]
    rec: dict[str, list] = {k: [] for k in ("x", "x_next", "sigma", "sigma_next", "step", "log_prob", "mean",
                                            "prompt", "parent")}
    n_edges, n_nodes, nfe_before = 0, 0, backbone.nfe
    history = None  # (x̂0 of the previous step, its σ) for multistep kernels
    for i, spec in enumerate(norm.steps):
        s, sn = float(sigmas[i]), float(sigmas[i + 1])
        v = torch.cat([backbone.velocity(x[j:j + batch_size], s, embeds.index(prompt[j:j + batch_size]))
                       for j in range(0, x.shape[0], batch_size)])
        k = spec.fanout
        if spec.kernel in MULTISTEP:
            out = KERNELS[spec.kernel](x, v, s, sn, spec.eta, history=history)
            history = (x - s * v, s)  # a multistep segment's first step has no history
            x = out.sample
            continue
        history = None
        xs, vs = x.repeat_interleave(k, 0), v.repeat_interleave(k, 0)
        child_prompt = prompt.repeat_interleave(k)
        child_paths = [p + (c,) for p in paths for c in range(k)]
        child_edges = [list(e) for e in edge_lists for _ in range(k)]
        if spec.kernel in DETERMINISTIC:
            out = KERNELS[spec.kernel](xs, vs, s, sn)
        else:
            if noise_fn is not None:
                noise = torch.stack([noise_fn(int(child_prompt[c]), i, child_paths[c]) for c in range(len(child_paths))])
            else:
                noise = torch.randn(xs.shape, generator=generator, dtype=torch.float32)
            out = KERNELS[spec.kernel](xs, vs, s, sn, spec.eta, noise=noise.to(xs.device), reduction=reduction)
        if spec.trained:
            m = xs.shape[0]
            for c in range(m):
                child_edges[c].append(n_edges + c)
            n_edges += m
            rec["x"].append(xs.cpu())
            rec["x_next"].append(out.sample.cpu())
            rec["sigma"].append(torch.full((m,), s, dtype=torch.float64))
            rec["sigma_next"].append(torch.full((m,), sn, dtype=torch.float64))
            rec["step"].append(torch.full((m,), i, dtype=torch.long))
            rec["log_prob"].append(out.log_prob.cpu())
            rec["mean"].append(out.mean.cpu())
            rec["prompt"].append(child_prompt.clone())
            rec["parent"].append(n_nodes + torch.arange(x.shape[0]).repeat_interleave(k))
        n_nodes += x.shape[0]
        x, prompt, paths, edge_lists = out.sample, child_prompt, child_paths, child_edges
    incidence = torch.zeros(x.shape[0], n_edges)
    for leaf, edges in enumerate(edge_lists):
        incidence[leaf, edges] = 1.0
    latent = tuple(x.shape[1:])

    def cat(key: str, empty: torch.Tensor) -> torch.Tensor:
        return torch.cat(rec[key]) if rec[key] else empty

    return Rollout(
        leaves=x.cpu(), leaf_prompt=prompt,
        x=cat("x", torch.zeros(0, *latent)), x_next=cat("x_next", torch.zeros(0, *latent)),
        sigma=cat("sigma", torch.zeros(0, dtype=torch.float64)), sigma_next=cat("sigma_next", torch.zeros(0, dtype=torch.float64)),
        step=cat("step", torch.zeros(0, dtype=torch.long)), log_prob=cat("log_prob", torch.zeros(0)),
        mean=cat("mean", torch.zeros(0, *latent)), edge_prompt=cat("prompt", torch.zeros(0, dtype=torch.long)),
        incidence=incidence, nfe=backbone.nfe - nfe_before, plan=norm,
        parent=cat("parent", torch.zeros(0, dtype=torch.long)))


def recompute_log_prob(backbone, rollout: Rollout, embeds, edges: torch.Tensor | slice | None = None,
                       reduction: str = "mean", share_nodes: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log π_θ and μ_θ of stored edges under the backbone's *current* weights (with grad).

    The velocity is a function of the start node (x, σ, prompt) only, so the children of one branch
    point need one transformer row, not one each: with ``share_nodes`` the selected edges of a step
    are reduced to their distinct ``rollout.parent`` nodes, the velocity is evaluated once per node
    and expanded to the edges (the gradient of the siblings' terms then flows through the shared
    row; same values and gradients up to float rounding, tested). A tree with fan-out k at its trained
    steps needs 1/k of the rows.

    Args:
        embeds: prompt embeddings, one row per prompt of the rollout.
        edges: which edges (default all).
        share_nodes: evaluate shared start nodes once (default: :data:`alignbench.perf.SPEEDUPS`).

    Returns:
        (log_prob float [E'], mean float [E', T, C]).
    """
    from ..perf import enabled

    share = enabled("share_nodes") if share_nodes is None else share_nodes
    idx = torch.arange(rollout.x.shape[0])[edges if edges is not None else slice(None)]
    plan = rollout.plan
    lps: list[torch.Tensor | None] = [None] * len(idx)
    means: list[torch.Tensor | None] = [None] * len(idx)
    steps = rollout.step[idx]
    for step in steps.unique().tolist():
        pos = (steps == step).nonzero().flatten()
        sel = idx[pos]
        spec = plan.steps[step]
        s, sn = float(rollout.sigma[sel][0]), float(rollout.sigma_next[sel][0])
        if share and rollout.parent is not None:
            nodes, inverse = torch.unique(rollout.parent[sel], return_inverse=True)
            first = torch.zeros(len(nodes), dtype=torch.long).scatter_(0, inverse.flip(0),
                                                                        torch.arange(len(sel)).flip(0))
            rep = sel[first]  # one edge per node (any of them: siblings hold the same x and prompt)
            v_node = backbone.velocity(rollout.x[rep].to(backbone.device), s, embeds.index(rollout.edge_prompt[rep]))
            v = v_node[inverse.to(v_node.device)]
        else:
            v = backbone.velocity(rollout.x[sel].to(backbone.device), s, embeds.index(rollout.edge_prompt[sel]))
        x = rollout.x[sel].to(backbone.device)
        res = KERNELS[spec.kernel](x, v, s, sn, spec.eta, sample=rollout.x_next[sel].to(backbone.device),
                                   reduction=reduction)
        for j, p in enumerate(pos.tolist()):
            lps[p], means[p] = res.log_prob[j], res.mean[j]
    return torch.stack(lps), torch.stack(means)
