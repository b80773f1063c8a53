"""Rollout plans and the tree executor on a micro backbone (specs/algorithms.md §0)."""

from __future__ import annotations

import pytest
import torch

from alignbench.models.backbone import FluxBackbone
from alignbench.models.tiny import TinyFluxConfig, build_tiny_pipeline
from alignbench.sampling.kernels import KERNELS
from alignbench.sampling.plan import RolloutPlan, StepSpec, execute, recompute_log_prob

MICRO = TinyFluxConfig(vae_channels=(8, 8, 8), text_dim=16, text_heads=2, num_layers=1, num_single_layers=1,
                       attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4))
PROMPTS = ["a photo of a red ring", "a photo of two squares"]


@pytest.fixture(scope="module")
def bb():
    return FluxBackbone(build_tiny_pipeline(MICRO, seed=3), 64, 64, max_sequence_length=20)


def chain(k: int, t: int = 4) -> RolloutPlan:
    """Flow-GRPO: K independent roots, flow_sde everywhere, all but the last step trained."""
    return RolloutPlan(k, [StepSpec("flow_sde", 0.9, 1, i < t - 1) for i in range(t)])


def tree_grpo(t: int = 4) -> RolloutPlan:
    """TreeGRPO-style: one root, a window of 2 steps branching 2-way, ODE elsewhere."""
    return RolloutPlan(1, [StepSpec("ode"), StepSpec("flow_sde", 0.9, 2, True), StepSpec("flow_sde", 0.9, 2, True),
                           StepSpec("ode")][:t])


def tmpo(t: int = 5) -> RolloutPlan:
    """TMPO-style: 3 roots, branch points at steps 1 and 3 with 3 cps children each."""
    steps = [StepSpec("ode") for _ in range(t)]
    steps[1] = StepSpec("cps", 0.7, 3, True)
    steps[3] = StepSpec("cps", 0.7, 3, True)
    return RolloutPlan(3, steps)


@pytest.mark.parametrize("plan,leaves,nfe,edges", [
    (chain(4), 4, 16, 12),                 # 4 roots × 4 steps; 3 trained steps × 4
    (tree_grpo(), 4, 1 + 1 + 2 + 4, 2 + 4),  # nodes per depth 1,1,2,4
    (tmpo(), 27, 3 + 3 + 9 + 9 + 27, 9 + 27),
])
def test_leaf_nfe_and_edge_counts_match_the_analytic_counts(bb, plan, leaves, nfe, edges):
    assert (plan.leaves_per_prompt(), plan.nfe_per_prompt(), plan.edges_per_prompt()) == (leaves, nfe, edges)
    emb = bb.encode_prompts(PROMPTS)
    seeds = [[10 * p + r for r in range(plan.n_roots)] for p in range(2)]
    ro = execute(bb, plan, emb, seeds, generator=torch.Generator().manual_seed(0))
    assert ro.leaves.shape == (2 * leaves, 64, 16) and ro.nfe == 2 * nfe and ro.x.shape[0] == 2 * edges
    assert ro.incidence.shape == (2 * leaves, 2 * edges)
    assert torch.equal(ro.leaf_prompt, torch.arange(2).repeat_interleave(leaves))
    # every leaf's path has one edge per trained step, all of its own prompt
    trained = sum(s.trained for s in plan.steps)
    assert torch.all(ro.incidence.sum(1) == trained)
    for leaf in range(ro.leaves.shape[0]):
        on_path = ro.incidence[leaf].bool()
        assert torch.all(ro.edge_prompt[on_path] == ro.leaf_prompt[leaf])
        assert sorted(ro.step[on_path].tolist()) == [i for i, s in enumerate(plan.steps) if s.trained]


def _noise(prompt: int, step: int, path: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash((prompt, step, path)) % (2**31))
    return torch.randn(64, 16, generator=g)


@pytest.mark.parametrize("plan", [tree_grpo(), tmpo(), chain(2)])
def test_prefix_shared_leaves_equal_leaves_sampled_step_by_step(bb, plan):
    emb = bb.encode_prompts(PROMPTS)
    seeds = [[10 * p + r for r in range(plan.n_roots)] for p in range(2)]
    ro = execute(bb, plan, emb, seeds, noise_fn=_noise)
    sig = bb.sigmas(len(plan.steps))
    leaf = 0
    with torch.no_grad():
        for p in range(2):
            def walk(p, x, path, depth, log_p):
                nonlocal leaf
                if depth == len(plan.steps):
                    assert torch.allclose(ro.leaves[leaf], x[0], atol=1e-5)
                    assert ro.path_log_prob()[leaf].item() == pytest.approx(log_p, abs=1e-4)
                    leaf += 1
                    return
                spec = plan.steps[depth]
                v = bb.velocity(x, float(sig[depth]), emb.index([p]))
                for c in range(spec.fanout):
                    if spec.kernel == "ode":
                        out = KERNELS["ode"](x, v, float(sig[depth]), float(sig[depth + 1]))
                    else:
                        out = KERNELS[spec.kernel](x, v, float(sig[depth]), float(sig[depth + 1]), spec.eta,
                                                   noise=_noise(p, depth, path + (c,))[None])
                    lp = float(out.log_prob[0]) if spec.trained else 0.0
                    walk(p, out.sample, path + (c,), depth + 1, log_p + lp)

            for r in range(plan.n_roots):
                walk(p, bb.initial_noise([seeds[p][r]]), (r,), 0, 0.0)
    assert leaf == ro.leaves.shape[0]


def test_path_log_prob_is_incidence_times_edge_log_probs(bb):
    emb = bb.encode_prompts(PROMPTS)
    ro = execute(bb, tmpo(), emb, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(1))
    manual = torch.stack([ro.log_prob[ro.incidence[i].bool()].sum() for i in range(ro.leaves.shape[0])])
    assert torch.allclose(ro.path_log_prob(), manual)


@pytest.mark.parametrize("plan", [chain(3), tree_grpo(), tmpo()])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_recomputed_edge_log_probs_equal_the_stored_ones(bb, plan, reduction):
    emb = bb.encode_prompts(PROMPTS)
    seeds = [[10 * p + r for r in range(plan.n_roots)] for p in range(2)]
    ro = execute(bb, plan, emb, seeds, generator=torch.Generator().manual_seed(2), reduction=reduction)
    lp, mean = recompute_log_prob(bb, ro, emb, reduction=reduction)
    # mean reduction: |Δ| < 1e-5 absolute (the spec's invariant); sum over d = 1024 elements: the
    # same per-element error, so 1e-6 relative to values of order 1e3
    rtol = 0 if reduction == "mean" else 1e-6
    assert torch.allclose(lp, ro.log_prob, atol=1e-5, rtol=rtol) and torch.allclose(mean, ro.mean, atol=1e-5)
    sub = torch.tensor([5, 0, 3])
    lp_sub, _ = recompute_log_prob(bb, ro, emb, edges=sub, reduction=reduction)
    assert torch.allclose(lp_sub, ro.log_prob[sub], atol=1e-5, rtol=rtol)


def test_shared_noise_roots_share_their_prefix(bb):
    plan = RolloutPlan(4, [StepSpec("ode"), StepSpec("flow_sde", 0.9, 1, True), StepSpec("flow_sde", 0.9, 1, True)],
                       shared_noise=True)
    assert plan.leaves_per_prompt() == 4 and plan.nfe_per_prompt() == 1 + 1 + 4
    ro = execute(bb, plan, bb.encode_prompts(PROMPTS[:1]), [[7]], generator=torch.Generator().manual_seed(0))
    assert ro.leaves.shape[0] == 4 and ro.nfe == 6
    assert torch.allclose(ro.x[0], ro.x[3])  # the 4 first edges start from the same node
    assert not torch.allclose(ro.leaves[0], ro.leaves[1])


def test_plans_that_branch_without_noise_are_rejected(bb):
    bad = RolloutPlan(1, [StepSpec("ode"), StepSpec("ode"), StepSpec("cps", 0.7, 3, True)])  # cps: s = 0 at σ' = 0
    with pytest.raises(ValueError, match="step 2: cannot branch.*cps std is 0"):
        execute(bb, bad, bb.encode_prompts(PROMPTS[:1]), [[0]])
    with pytest.raises(ValueError, match="cannot train"):
        execute(bb, RolloutPlan(1, [StepSpec("ode", trained=True)]), bb.encode_prompts(PROMPTS[:1]), [[0]])
    with pytest.raises(ValueError, match="unknown kernel 'sde'"):
        execute(bb, RolloutPlan(1, [StepSpec("sde", 0.5)]), bb.encode_prompts(PROMPTS[:1]), [[0]])


def test_a_depths_nodes_forwarded_in_one_batch_give_the_log_probs_of_one_by_one(bb):
    """Every depth's nodes (all prompts, all branches) go through the transformer as one batch; the
    leaves and log-probs equal those of forwarding the nodes one row at a time."""
    emb = bb.encode_prompts(PROMPTS)
    plan = tmpo()
    one = execute(bb, plan, emb, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(0), batch_size=1)
    nfe0 = bb.nfe
    batched = execute(bb, plan, emb, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(0),
                      batch_size=4096)
    assert bb.nfe - nfe0 == len(PROMPTS) * plan.nfe_per_prompt()  # one row per node: prefixes computed once
    torch.testing.assert_close(batched.log_prob, one.log_prob, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.leaves, one.leaves, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("plan,parents", [(chain(3), 3 * 3), (tree_grpo(), 1 + 2), (tmpo(), 3 + 9)])
def test_siblings_share_their_start_node_and_the_update_evaluates_it_once(bb, plan, parents):
    """The children of a branch point have one parent id (same x and prompt); recomputing with
    shared nodes costs one row per node (the analytic count) and gives the same log-probs, means
    and parameter gradients as one row per edge."""
    emb = bb.encode_prompts(PROMPTS)
    seeds = [[10 * p + r for r in range(plan.n_roots)] for p in range(2)]
    ro = execute(bb, plan, emb, seeds, generator=torch.Generator().manual_seed(4))
    assert plan.update_rows_per_prompt() == parents
    assert plan.update_rows_per_prompt(share_nodes=False) == plan.edges_per_prompt()
    assert len(ro.parent.unique()) == 2 * parents
    for node in ro.parent.unique():
        m = ro.parent == node
        assert torch.equal(ro.x[m], ro.x[m][:1].expand_as(ro.x[m])) and len(ro.edge_prompt[m].unique()) == 1
    params = [p for p in bb.transformer.parameters()][:6]
    w = torch.randn(ro.x.shape[0], generator=torch.Generator().manual_seed(0))
    out = {}
    for share in (False, True):
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        nfe0 = bb.nfe
        lp, mean = recompute_log_prob(bb, ro, emb, share_nodes=share)
        rows = bb.nfe - nfe0
        (w * lp).sum().backward()
        out[share] = (lp.detach(), mean.detach(), [p.grad.clone() for p in params], rows)
        for p in params:
            p.requires_grad_(False)
    assert out[True][3] == 2 * plan.update_rows_per_prompt() and out[False][3] == ro.x.shape[0]
    assert torch.allclose(out[True][0], out[False][0], atol=1e-6)
    assert torch.allclose(out[True][1], out[False][1], atol=1e-6)
    for g_shared, g_each in zip(out[True][2], out[False][2], strict=True):
        assert torch.allclose(g_shared, g_each, rtol=1e-4, atol=1e-6)
