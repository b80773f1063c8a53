"""One inner update of the policy on a stored rollout (specs/algorithms.md §0 "Training loop").

Two loss levels share this code path:

- ``edge``: the loss is a mean over trained edges of a per-edge term (the GRPO family's clipped
  surrogate); edge batches of ``micro_batch`` rows are recomputed with gradients, and each batch's
  sum divided by E is backpropagated — exactly the full-batch gradient.
- ``path``: the loss is a function of each leaf's trajectory log-ratio (TMPO). First every edge's
  log π_θ is known (the stored log π_old at θ = θ_old, otherwise a no-grad pass), the path loss
  gives d(loss)/d(log-ratio_l) per leaf, and then Σ_e w_e·log π_θ,e with
  w_e = Σ_l M[l, e]·d(loss)/d(log-ratio_l) is backpropagated edge batch by edge batch — exactly the
  full-batch gradient (tested).

Both add β·mean_e g_e·KL_e to the reference policy (the LoRA adapter disabled, or a LoRA snapshot)
when β > 0, g the algorithm's per-edge KL gate (1 by default).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..sampling.kernels import kernel_std
from ..sampling.plan import Rollout, recompute_log_prob
from .algorithm import Algorithm, PathBatch


def reference_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor, sigma: torch.Tensor,
                 sigma_next: torch.Tensor) -> torch.Tensor:
    """KL term to the reference per edge, float [E]: |Δ|·mean_d((μ_θ − μ_ref)²)/(2s²).

    For ``flow_sde`` (s = a·√|Δ|) this is Flow-GRPO's mean_d((μ_θ − μ_ref)²)/(2a²), i.e. |Δ| times the
    Gaussian KL per element (specs/algorithms.md §0 "KL to the reference"); the same scaling is used
    for the other kernels.

    Args:
        mean, ref_mean: float [E, ...]; std, sigma, sigma_next: float [E].
    """
    d = (sigma - sigma_next).abs().to(mean.dtype)
    sq = ((mean - ref_mean) ** 2).reshape(mean.shape[0], -1).mean(1)
    return d * sq / (2 * std.to(mean.dtype) ** 2)


def edge_std(rollout: Rollout) -> torch.Tensor:
    """The kernel std s of every stored edge, float [E] (from the plan's kernel and η per step)."""
    out = torch.zeros(rollout.step.shape[0])
    for step in rollout.step.unique().tolist():
        spec = rollout.plan.steps[step]
        m = rollout.step == step
        out[m] = kernel_std(spec.kernel, float(rollout.sigma[m][0]), float(rollout.sigma_next[m][0]), spec.eta)
    return out


def edge_chunks(rollout: Rollout, micro_batch: int) -> list[torch.Tensor]:
    """Consecutive edge batches of at most ``micro_batch`` edges (one node's children alone may exceed
    it) that do not split the children of a start node, so that each node's velocity is evaluated
    once (:func:`recompute_log_prob` with shared nodes). Without ``rollout.parent``, or with the
    ``share_nodes`` speed-up off: plain slices of ``micro_batch`` edges.

    Returns:
        long index tensors covering 0..E-1 in order.
    """
    from ..perf import enabled

    n = rollout.x.shape[0]
    if rollout.parent is None or not enabled("share_nodes"):
        return [torch.arange(s, min(s + micro_batch, n)) for s in range(0, n, micro_batch)]
    # boundaries: where the parent id changes (siblings are stored next to each other)
    starts = [0] + [i for i in range(1, n) if int(rollout.parent[i]) != int(rollout.parent[i - 1])] + [n]
    chunks, begin = [], 0
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        if b - begin > micro_batch and a > begin:
            chunks.append(torch.arange(begin, a))
            begin = a
    chunks.append(torch.arange(begin, n))
    return chunks


def _reduce(sq: torch.Tensor, reduction: str) -> torch.Tensor:
    flat = sq.reshape(sq.shape[0], -1)
    return flat.mean(1) if reduction == "mean" else flat.sum(1)


def accumulate_gradients(backbone, algo: Algorithm, rollout: Rollout, embeds, advantages: torch.Tensor,
                         *, reuse_old: bool, backward: Callable[[torch.Tensor], None] | None = None,
                         reference_state: dict[str, torch.Tensor] | None = None,
                         reference_cache: dict | None = None) -> dict[str, float]:
    """Compute one inner update's loss and accumulate its gradient into the trained parameters
    (no optimizer step).

    Args:
        backbone: the adapter (LoRA attached, trained parameters requiring grad).
        algo: the algorithm (its ``loss_level``, losses and config: ``kl_beta``,
            ``logprob_reduction``, ``micro_batch``).
        rollout: the stored rollout (edges E, leaves L).
        embeds: prompt embeddings, one row per prompt of the rollout.
        advantages: float [L] per leaf or float [E] per edge (``algo.advantage_level``); ``edge``
            losses map leaf advantages to edges as the mean over descendant leaves.
        reuse_old: the parameters still equal θ_old (first inner update): the stored log-probs are the
            current ones, so the path loss's no-grad pass is skipped.
        backward: ``loss.backward`` replacement (e.g. ``accelerator.backward``).
        reference_state: LoRA parameter values of the reference policy (a snapshot; see
            ``backbone.reference``); None = the adapter disabled.
        reference_cache: a dict kept across the inner updates of one iteration (and only those: the
            rollout and the reference must be the same): the reference means μ_ref of each edge
            batch are computed by the first inner update and reused by the others, the same values
            bit for bit (the ``cache_reference`` speed-up of :mod:`alignbench.perf`; None = no cache).

    The KL term is β·Σ_e g_e·KL_e / E with g = ``algo.kl_edge_weights(rollout)`` (1 by default; GARDO's
    gate); the reported ``kl`` is the unweighted mean over edges.

    Returns:
        {"loss", "clip_frac", "approx_kl", "ratio_mean", "kl"} (means over the update).
    """
    from .algorithm import leaf_to_edge

    backward = backward or (lambda t: t.backward())
    cfg = algo.config
    n_edges = rollout.x.shape[0]
    if n_edges == 0:
        raise ValueError("the rollout has no trained edges")
    red, mb, beta = cfg.logprob_reduction, cfg.micro_batch, cfg.kl_beta
    std = edge_std(rollout)
    chunks = edge_chunks(rollout, mb)
    kl_total = 0.0
    gate = algo.kl_edge_weights(rollout)
    gate = torch.ones(n_edges) if gate is None else gate.detach().float()

    from ..perf import enabled

    cache = reference_cache if enabled("cache_reference") else None

    def kl_term(idx: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        nonlocal kl_total
        key = (int(idx[0]), len(idx))
        if cache is not None and key in cache:
            ref_mean = cache[key].to(mean.device)
        else:
            with torch.no_grad(), backbone.reference(reference_state):
                _, ref_mean = recompute_log_prob(backbone, rollout, embeds, idx, red)
            if cache is not None:
                cache[key] = ref_mean.detach()
        kl = reference_kl(mean, ref_mean, std[idx].to(mean.device), rollout.sigma[idx].to(mean.device),
                          rollout.sigma_next[idx].to(mean.device))
        kl_total += float(kl.detach().sum())
        return beta * (gate[idx].to(kl.device) * kl).sum() / n_edges

    if algo.loss_level == "edge":
        adv = advantages if algo.advantage_level == "edge" else leaf_to_edge(rollout.incidence, advantages)
        loss_total, agg = 0.0, {"clip_frac": 0.0, "approx_kl": 0.0, "ratio_mean": 0.0}
        for idx in chunks:
            lp, mean = recompute_log_prob(backbone, rollout, embeds, idx, red)
            per_edge, st = algo.edge_loss(lp, rollout.log_prob[idx].to(lp.device), adv[idx].to(lp.device))
            loss = per_edge.sum() / n_edges
            loss_total += float(loss.detach())
            if beta > 0:
                loss = loss + kl_term(idx, mean)
            backward(loss)
            for k in agg:
                agg[k] += st[k] * len(idx) / n_edges
        return {"loss": loss_total, **agg, "kl": kl_total / n_edges}

    # path level
    w = algo.edge_log_ratio_weights(rollout).to(torch.float32)
    if reuse_old:
        lp_all, mean_all = rollout.log_prob, rollout.mean
    else:
        with torch.no_grad():
            parts = [recompute_log_prob(backbone, rollout, embeds, idx, red) for idx in chunks]
        lp_all = torch.cat([p[0].cpu() for p in parts])
        mean_all = torch.cat([p[1].cpu() for p in parts])
    ratio_norm = _reduce((mean_all - rollout.mean) ** 2, red) / (2 * std**2)
    m = rollout.incidence
    log_ratio = (m @ (w * (lp_all - rollout.log_prob))).detach().requires_grad_(True)
    batch = PathBatch(log_ratio, (m @ ratio_norm).detach(), advantages.detach().float(), rollout.leaf_prompt)
    path_loss, stats = algo.path_loss(batch)
    (grad_leaf,) = torch.autograd.grad(path_loss, log_ratio)
    edge_w = (m.t() @ grad_leaf) * w
    for idx in chunks:
        lp, mean = recompute_log_prob(backbone, rollout, embeds, idx, red)
        surrogate = (edge_w[idx].to(lp.device) * lp).sum()
        if beta > 0:
            surrogate = surrogate + kl_term(idx, mean)
        backward(surrogate)
    return {"loss": float(path_loss.detach()), "clip_frac": stats.get("clip_frac", 0.0),
            "approx_kl": stats.get("approx_kl", 0.0), "ratio_mean": stats.get("ratio_mean", 1.0),
            "kl": kl_total / n_edges}
