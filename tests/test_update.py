"""The update step of the engine: exact micro-batching, the KL term, leaf → edge advantages."""

from __future__ import annotations

import pytest
import torch
from alignbench.algorithms.flow_grpo import FlowGRPO
from alignbench.algorithms.tmpo import TMPO

from alignbench.models.backbone import FluxBackbone
from alignbench.models.tiny import build_tiny_pipeline
from alignbench.sampling.kernels import KERNELS
from alignbench.sampling.plan import execute, recompute_log_prob
from alignbench.training.algorithm import Context, leaf_to_edge
from alignbench.training.objectives import flow_sde_kl
from alignbench.training.update import accumulate_gradients, edge_std, reference_kl

from .test_rollout import MICRO, PROMPTS, chain, tmpo


@pytest.fixture(scope="module")
def bb():
    b = FluxBackbone(build_tiny_pipeline(MICRO, seed=3), 64, 64, max_sequence_length=20)
    b.add_lora(4, 8, seed=0)
    return b


def _perturb(bb, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bb.lora_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _grads(bb) -> torch.Tensor:
    return torch.cat([p.grad.flatten().clone() for p in bb.lora_parameters()])


def _zero(bb) -> None:
    for p in bb.lora_parameters():
        p.grad = None


def _ctx(bb, k: int, steps: int) -> Context:
    return Context(num_steps=steps, sigmas=bb.sigmas(steps).tolist(), group_size=k, iterations=10)


def test_path_loss_micro_batched_gradient_equals_the_full_batch_gradient(bb):
    emb = bb.encode_prompts(PROMPTS)
    ro = execute(bb, tmpo(), emb, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(0))
    _perturb(bb, 1)  # θ ≠ θ_old: ratios differ from 1 and some are clipped
    adv = torch.randn(ro.leaves.shape[0], generator=torch.Generator().manual_seed(2))
    algo = TMPO(TMPO.Config(clip_range=0.005, micro_batch=7, s_max=3, early=(1, 2), late=(1, 3)), _ctx(bb, 27, 5))
    # full batch by plain autograd over every edge at once
    _zero(bb)
    lp, mean = recompute_log_prob(bb, ro, emb)
    std = edge_std(ro)
    rn = ((mean.detach() - ro.mean) ** 2).reshape(len(lp), -1).mean(1) / (2 * std**2)
    log_r = ro.incidence @ (lp - ro.log_prob) + ro.incidence @ rn
    r = torch.exp(log_r)
    full_loss = -torch.minimum(r * adv, r.clamp(0.995, 1.005) * adv).mean()
    full_loss.backward()
    full = _grads(bb)
    assert 0 < float(((r - 1).abs() > 0.005).float().mean()) < 1  # the test exercises both clip branches
    _zero(bb)
    stats = accumulate_gradients(bb, algo, ro, emb, adv, reuse_old=False)
    micro = _grads(bb)
    assert stats["loss"] == pytest.approx(float(full_loss.detach()), rel=1e-5)
    assert torch.allclose(micro, full, rtol=1e-4, atol=1e-7)


def test_edge_loss_with_kl_micro_batched_gradient_equals_the_full_batch_gradient(bb):
    emb = bb.encode_prompts(PROMPTS)
    ro = execute(bb, chain(3), emb, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(0))
    _perturb(bb, 3)
    adv = torch.randn(ro.leaves.shape[0], generator=torch.Generator().manual_seed(4))
    cfg = FlowGRPO.Config(eta=0.9, kl_beta=0.5, clip_range=0.01, micro_batch=4)
    algo = FlowGRPO(cfg, _ctx(bb, 3, 4))
    _zero(bb)
    lp, mean = recompute_log_prob(bb, ro, emb)
    with torch.no_grad(), bb.reference():
        _, ref_mean = recompute_log_prob(bb, ro, emb)
    adv_e = leaf_to_edge(ro.incidence, adv).clamp(-5, 5)
    ratio = torch.exp(lp - ro.log_prob)
    surr = torch.maximum(-adv_e * ratio, -adv_e * ratio.clamp(0.99, 1.01)).mean()
    kl = flow_sde_kl(mean, ref_mean, ro.sigma, ro.sigma_next, 0.9).mean()
    (surr + 0.5 * kl).backward()
    full = _grads(bb)
    _zero(bb)
    stats = accumulate_gradients(bb, algo, ro, emb, adv, reuse_old=False)
    assert torch.allclose(_grads(bb), full, rtol=1e-4, atol=1e-7)
    assert stats["kl"] == pytest.approx(float(kl.detach()), rel=1e-4)
    assert stats["kl"] > 0


def test_reference_kl_is_flow_grpo_kl_for_flow_sde():
    torch.manual_seed(0)
    m, ref = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    sig, nxt = torch.tensor([1.0, 0.7, 0.3]), torch.tensor([0.8, 0.5, 0.1])
    x = torch.zeros(3, 5, 4)
    std = KERNELS["flow_sde"](x, x, sig, nxt, 0.9, noise=torch.zeros_like(x)).std
    assert torch.allclose(reference_kl(m, ref, std, sig, nxt), flow_sde_kl(m, ref, sig, nxt, 0.9), rtol=1e-5)


def test_leaf_to_edge_is_the_mean_over_descendant_leaves():
    # two leaves share edge 0; edge 1 leads to leaf 0, edge 2 to leaf 1
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert leaf_to_edge(m, torch.tensor([2.0, -4.0])).tolist() == [-1.0, 2.0, -4.0]


def test_gradient_checkpointing_gives_the_same_gradients(bb):
    emb = bb.encode_prompts(PROMPTS)
    ro = execute(bb, tmpo(), emb, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(0))
    _perturb(bb, 5)
    adv = torch.randn(ro.leaves.shape[0], generator=torch.Generator().manual_seed(3))
    algo = TMPO(TMPO.Config(clip_range=0.2, micro_batch=5, s_max=3, early=(1, 2), late=(1, 3)), _ctx(bb, 27, 5))
    _zero(bb)
    plain = accumulate_gradients(bb, algo, ro, emb, adv, reuse_old=False)
    g_plain = _grads(bb)
    tr = bb.transformer
    tr.enable_gradient_checkpointing()
    try:
        assert tr.is_gradient_checkpointing
        _zero(bb)
        ckpt = accumulate_gradients(bb, algo, ro, emb, adv, reuse_old=False)
        g_ckpt = _grads(bb)
    finally:
        tr.disable_gradient_checkpointing()
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert g_plain.abs().sum() > 0
    torch.testing.assert_close(g_ckpt, g_plain, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mb", [1, 2, 3, 7, 64])
def test_edge_chunks_keep_siblings_together_within_the_micro_batch(bb, mb):
    from alignbench.perf import speedups
    from alignbench.training.update import edge_chunks

    emb = bb.encode_prompts(PROMPTS)
    ro = execute(bb, tmpo(), emb, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(0))
    chunks = edge_chunks(ro, mb)
    assert torch.equal(torch.cat(chunks), torch.arange(ro.x.shape[0]))
    for c in chunks:  # a node's 3 children are never split; a chunk exceeds mb only to hold one node
        assert len(c) <= max(mb, 3)
        for node in ro.parent[c].unique():
            assert int((ro.parent == node).sum()) == int((ro.parent[c] == node).sum())
    if mb == 7:
        assert [len(c) for c in chunks[:2]] == [6, 6]  # two nodes of 3 fit in 7, a third does not
    with speedups(False):
        assert [len(c) for c in edge_chunks(ro, mb)][:1] == [min(mb, ro.x.shape[0])]


def test_cached_reference_means_give_the_same_kl_and_gradients_bit_for_bit(bb):
    """Two inner updates with the KL term: the second reuses the first's μ_ref (cache_reference),
    skips its reference forwards, and gives exactly the loss, KL and gradients of recomputing them."""
    emb = bb.encode_prompts(PROMPTS)
    ro = execute(bb, chain(3), emb, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(0))
    _perturb(bb, 5)
    adv = torch.randn(ro.leaves.shape[0], generator=torch.Generator().manual_seed(6))
    algo = FlowGRPO(FlowGRPO.Config(eta=0.9, kl_beta=0.5, clip_range=0.01, micro_batch=4), _ctx(bb, 3, 4))
    results = []
    for cache in (None, {}):
        runs = []
        for _ in range(2):  # two inner updates on the same rollout and reference
            _zero(bb)
            nfe0 = bb.nfe
            st = accumulate_gradients(bb, algo, ro, emb, adv, reuse_old=False, reference_cache=cache)
            runs.append((st, _grads(bb), bb.nfe - nfe0))
        results.append(runs)
    (plain1, plain2), (cached1, cached2) = results
    n = ro.x.shape[0]
    assert plain2[2] == cached1[2] == 2 * n and cached2[2] == n  # policy + reference rows; reference cached
    assert cached2[0] == plain2[0] and torch.equal(cached2[1], plain2[1]) and cached2[0]["kl"] > 0
