"""MixGRPO, TreeGRPO and GARDO: known answers for their plans, advantages and regularisers, and the
engine pieces they added (DPM-Solver++ tail, per-edge KL gate, LoRA-snapshot reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from alignbench.algorithms.gardo import GARDO, KLGate, diversity_shaped_advantages, uncertainty, winrate
from alignbench.algorithms.mixgrpo import MixGRPO, compressed_tail, mixgrpo_plan
from alignbench.algorithms.treegrpo import TreeGRPO, backup_edge_values, truncated_geometric

from alignbench.models.backbone import FluxBackbone
from alignbench.models.tiny import TinyFluxConfig, build_tiny_pipeline
from alignbench.sampling.kernels import dpmpp_2m_step
from alignbench.sampling.plan import execute
from alignbench.training.algorithm import Context, Progress, Rewards

MICRO = TinyFluxConfig(vae_channels=(8, 8, 8), text_dim=16, text_heads=2, num_layers=1, num_single_layers=1,
                       attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4))
SIGMAS = [1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.15, 0.0]  # T = 10


def ctx(**kw) -> Context:
    base = dict(num_steps=10, sigmas=SIGMAS, group_size=27, iterations=40)
    return Context(**{**base, **kw})


@pytest.fixture(scope="module")
def backbone():
    return FluxBackbone(build_tiny_pipeline(MICRO, seed=0), 64, 64, max_sequence_length=20, guidance_scale=1.0)


# ------------------------------------------------------------------------------------------ MixGRPO
def test_mixgrpo_progressive_window_moves_every_tau_iterations_and_stops_before_the_last_step():
    algo = MixGRPO(MixGRPO.Config(window=4, shift_every=8, shift_by=1), ctx())
    rng = np.random.default_rng(0)
    starts = []
    for n in range(60):
        plan = algo.plan(Progress(n, 60), rng)
        trained = [i for i, s in enumerate(plan.steps) if s.trained]
        assert trained == list(range(trained[0], trained[0] + 4))
        assert all(plan.steps[i].kernel == ("flow_sde" if i in trained else "ode") for i in range(10))
        starts.append(trained[0])
    # l(n) = min(⌊n/8⌋, T − w − 1 = 5)
    assert starts == [min(n // 8, 5) for n in range(60)]
    assert 9 not in [i for i, s in enumerate(plan.steps) if s.trained]  # never the last transition
    frozen = MixGRPO(MixGRPO.Config(window_schedule="frozen"), ctx())
    assert all(frozen.window_start(Progress(n, 60), rng) == 0 for n in range(60))
    rand = MixGRPO(MixGRPO.Config(window_schedule="random"), ctx())
    seen = {rand.window_start(Progress(0, 60), rng) for _ in range(300)}
    assert seen == set(range(6))


def test_mixgrpo_rollout_trains_only_window_edges_and_shares_the_prefix(backbone):
    sig = backbone.sigmas(10).tolist()
    plan = mixgrpo_plan(sig, 5, start=3, width=2, eta=0.7)
    emb = backbone.encode_prompts(["a photo of a ring", "a photo of a cross"])
    ro = execute(backbone, plan, emb, [[1], [2]], generator=torch.Generator().manual_seed(0))
    assert sorted(ro.step.unique().tolist()) == [3, 4]
    assert ro.x.shape[0] == 2 * 5 * 2  # prompts × K × window steps
    # shared initial noise: prefix of 3 ODE steps once per prompt, then K nodes for 7 steps
    assert ro.nfe == 2 * (3 + 1 + 5 * 6) == 2 * plan.nfe_per_prompt()
    assert ro.incidence.sum(1).tolist() == [2.0] * 10


def test_dpm_solver_2m_kernel_matches_diffusers_dpmsolver_multistep_and_starts_as_euler():
    from diffusers import DPMSolverMultistepScheduler

    m, c = 0.7, 0.3  # data x0 ~ N(m, c²): the exact velocity of the rectified-flow ODE

    def v(x, s):
        var = (1 - s) ** 2 * c**2 + s**2
        return (x - (m + (1 - s) * c**2 * (x - (1 - s) * m) / var)) / s

    sched = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, prediction_type="flow_prediction",
                                        use_flow_sigmas=True, flow_shift=1.0, lower_order_final=True,
                                        final_sigmas_type="zero")
    sched.set_timesteps(8)
    sig = sched.sigmas.double().tolist()
    x1 = torch.tensor([[1.3], [-0.4], [0.2]], dtype=torch.float64)
    ref = ours = (1 - sig[0]) * m + math.sqrt((1 - sig[0]) ** 2 * c**2 + sig[0] ** 2) * x1
    hist = None
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(v(ref, sig[i]), t, ref).prev_sample
        vel = v(ours, sig[i])
        out = dpmpp_2m_step(ours, vel, sig[i], sig[i + 1], history=hist)
        hist, ours = (ours - sig[i] * vel, sig[i]), out.sample
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert float((ours - (m + c * x1)).abs().max()) < 0.05  # and it lands near the exact ODE solution
    x = torch.randn(3, 4, dtype=torch.float64)
    vel = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(dpmpp_2m_step(x, vel, 0.8, 0.6).sample, x + (0.6 - 0.8) * vel)


def test_mixgrpo_flash_compresses_the_tail_and_runs_it_with_dpm_solver(backbone):
    sig = backbone.sigmas(10).tolist()
    assert compressed_tail(SIGMAS, 4, 0.4) == [0.7, 0.5, 0.3, 0.0]  # 6 steps → ⌈2.4⌉ = 3
    plan = mixgrpo_plan(sig, 3, start=0, width=4, eta=0.7, flash=True, compression=0.4)
    assert [s.kernel for s in plan.steps] == ["flow_sde"] * 4 + ["dpmpp2m"] * 3
    assert len(plan.sigmas) == 8 and plan.sigmas[:5] == tuple(sig[:5]) and plan.sigmas[-1] == 0.0
    emb = backbone.encode_prompts(["a photo of a ring"])
    ro = execute(backbone, plan, emb, [[1]], generator=torch.Generator().manual_seed(0))
    assert ro.nfe == 1 + 3 * 6 == plan.nfe_per_prompt()
    assert sorted(ro.step.unique().tolist()) == [0, 1, 2, 3] and ro.leaves.shape[0] == 3
    assert torch.isfinite(ro.leaves).all()


# ------------------------------------------------------------------------------------------ TreeGRPO
def _tree_rollout(backbone, start=2, k=2, w=2):
    from alignbench.algorithms.treegrpo import treegrpo_plan

    plan = treegrpo_plan(10, start, w, k, 0.7)
    emb = backbone.encode_prompts(["a photo of a ring"])
    return execute(backbone, plan, emb, [[3]], generator=torch.Generator().manual_seed(1)), plan


def test_treegrpo_backs_leaf_advantages_up_the_tree_by_hand(backbone):
    ro, plan = _tree_rollout(backbone)  # one root, 2 × 2 → 4 leaves, edges: 2 at step 2, 4 at step 3
    assert ro.nfe == plan.nfe_per_prompt() == 2 + 1 + 2 + 4 * 6
    assert ro.step.tolist() == [2, 2, 3, 3, 3, 3]
    leaf = torch.tensor([1.0, -1.0, 3.0, 0.0])
    # leaves are depth-first: edges 2, 3 lie under edge 0; 4, 5 under edge 1
    mean = backup_edge_values(ro, leaf, weighted=False)
    torch.testing.assert_close(mean, torch.tensor([0.0, 1.5, 1.0, -1.0, 3.0, 0.0]))
    lp = ro.log_prob.double()
    w01 = torch.softmax(lp[[2, 3]], 0)
    w23 = torch.softmax(lp[[4, 5]], 0)
    expect = torch.tensor([w01[0] * 1 + w01[1] * -1, w23[0] * 3 + w23[1] * 0, 1.0, -1.0, 3.0, 0.0])
    torch.testing.assert_close(backup_edge_values(ro, leaf, weighted=True), expect.float())
    # with known log-probs: weights e^a/(e^a + e^b)
    ro.log_prob = torch.tensor([0.0, 0.0, math.log(3.0), 0.0, 0.0, math.log(1 / 3)])
    torch.testing.assert_close(backup_edge_values(ro, leaf, weighted=True),
                               torch.tensor([0.75 * 1 - 0.25, 0.75 * 3, 1.0, -1.0, 3.0, 0.0]))


def test_treegrpo_advantages_are_leaf_zscores_backed_up(backbone):
    ro, _ = _tree_rollout(backbone)
    algo = TreeGRPO(TreeGRPO.Config(backup="mean", fanout=2, window=2), ctx(group_size=4))
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    adv = algo.advantages(ro, Rewards(r, {"partial": r}, torch.zeros(4, dtype=torch.long), {"partial": 1.0}),
                          Progress(0, 1))
    z = (r - 0.5) / (0.5 + 1e-4)
    torch.testing.assert_close(adv, torch.stack([z[:2].mean(), z[2:].mean(), *z]), rtol=1e-5, atol=1e-6)


def test_treegrpo_window_start_follows_the_truncated_geometric_law():
    from scipy.stats import chisquare

    algo = TreeGRPO(TreeGRPO.Config(), ctx())
    rng = np.random.default_rng(7)
    n = 4000
    starts = np.array([algo.window_start(Progress(0, 10), rng) for _ in range(n)])
    p = truncated_geometric(7, 0.5)  # {0, …, T − w − 1 = 6}
    np.testing.assert_allclose(p, 0.5 ** np.arange(7) / (2 - 0.5**6))
    counts = np.bincount(starts, minlength=7)
    assert counts.sum() == n and starts.max() <= 6
    assert chisquare(counts, p * n).pvalue > 1e-3
    shifting = TreeGRPO(TreeGRPO.Config(window_law="shifting", shift_every=50), ctx())
    assert [shifting.window_start(Progress(it, 999), rng) for it in (0, 49, 50, 120, 900)] == [0, 0, 1, 2, 6]
    plan = algo.plan(Progress(0, 10), rng)
    assert plan.leaves_per_prompt() == 27 and plan.edges_per_prompt() == 39


# ------------------------------------------------------------------------------------------ GARDO
def test_gardo_shaping_scales_only_non_negative_advantages_with_mean_scale_one():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0], [1.0, 0.0], [1.0, 0.0]])
    a = diversity_shaped_advantages(r, g, f, "code")
    # group 0: A = R − 0.5 = [0.5, −0.5, 0, 0]; d_i = min_j (1 − cos): [1 − 1/√2]·… computed by hand
    c = 1 - 1 / math.sqrt(2)
    d = torch.tensor([c, c, c, c])  # each has a neighbour at 45°
    scale = d / d.mean()
    torch.testing.assert_close(a[:4], torch.tensor([0.5 * scale[0], -0.5, 0.0, 0.0]))
    assert a[4:].tolist() == [0.0, 0.0]  # identical images, zero advantage stays zero
    f2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]])
    r2 = torch.tensor([3.0, 1.0, 2.0, 0.0])
    g2 = torch.zeros(4, dtype=torch.long)
    a2 = diversity_shaped_advantages(r2, g2, f2, "code")
    base = r2 - r2.mean()
    dist = 1 - torch.nn.functional.normalize(f2.double(), dim=1) @ torch.nn.functional.normalize(f2.double(), dim=1).t()
    dist.fill_diagonal_(float("inf"))
    dmin = dist.min(1).values
    expect = torch.where(base >= 0, base * dmin / dmin.mean(), base.double())
    torch.testing.assert_close(a2, expect.float())
    assert (a2[base < 0] == base[base < 0]).all() and float((dmin / dmin.mean()).mean()) == pytest.approx(1.0)
    torch.testing.assert_close(diversity_shaped_advantages(r2, g2, f2, "paper"),
                               torch.where(base >= 0, base * dmin, base.double()).float())


def test_gardo_gate_fraction_follows_the_recorded_uncertainty_sequence():
    gate = KLGate(0.1, history=3)
    seq = [0.0, 0.5, 0.2, 0.1, -1.0, 0.3, 0.9, 0.9]
    ks = [gate.update(u) for u in seq]
    # 0.0 first (kept), 0.5 > max → ×1.1, 0.2 inside, 0.1 inside, −1.0 < min → ×0.9,
    # 0.3 inside (window {0.2, 0.1, −1.0}: max 0.2 → above!) → ×1.1, 0.9 > max → ×1.1, 0.9 = max → same
    expect, k = [], 0.1
    for factor in (1, 1.1, 1, 1, 0.9, 1.1, 1.1, 1):
        k = min(k * factor, 1.0)
        expect.append(k)
    assert ks == pytest.approx(expect)
    capped = KLGate(0.95, 20)
    capped.update(0.0)
    assert capped.update(1.0) == 1.0
    u = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    gate.k = 0.34  # ⌈0.34·3⌉ = 2 per group
    assert gate.mask(u, g).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]


def test_gardo_uncertainty_is_proxy_winrate_minus_auxiliary_winrate():
    proxy = torch.tensor([0.0, 1.0, 2.0, 3.0])
    aux = torch.tensor([3.0, 2.0, 1.0, 1.0])
    torch.testing.assert_close(winrate(proxy), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(winrate(aux), torch.tensor([1.0, 2 / 3, 1 / 6, 1 / 6], dtype=torch.float64))
    u = uncertainty(proxy, [aux])
    torch.testing.assert_close(u, winrate(proxy) - winrate(aux))
    torch.testing.assert_close(uncertainty(proxy, [aux], "code"), -u)
    torch.testing.assert_close(uncertainty(proxy, []), winrate(proxy))


def test_gardo_gates_over_processes_as_one_process_does():
    """Under ``accelerate launch`` each process holds half the groups; GARDO's win rates are over the
    whole iteration's batch (``Context.gather``), so each process gates exactly the samples a
    one-process run gates, and k moves alike. Without the gather (local win rates) the gates differ."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(5)  # seeds 5, 7, 8, 9 of 0-9 rank a group differently by local win rates
    n_groups, k_size, iterations = 4, 6, 4
    L = n_groups * k_size
    data = [(torch.rand(L, generator=gen), (torch.rand(L, generator=gen) > 0.5).float(), torch.randn(L, 8, generator=gen))
            for _ in range(iterations)]
    group = torch.arange(n_groups).repeat_interleave(k_size)
    cfg = GARDO.Config(gate_init=0.3)

    def gates(algo, idx, groups):
        out, ks = [], []
        for it, (proxy, aux, feats) in enumerate(data):
            r = Rewards(proxy[idx], {"partial": proxy[idx], "accuracy": aux[idx]}, groups,
                        {"partial": 1.0, "accuracy": 0.0}, feats[idx])
            algo.advantages(SimpleNamespace(incidence=torch.eye(len(idx))), r, Progress(it, 9))
            out.append(algo.kl_edge_weights(None).clone())
            ks.append(algo.gate.k)
        return out, ks

    one, k_one = gates(GARDO(cfg, ctx()), torch.arange(L), group)
    assert len(set(k_one)) > 1  # k moves on these batches
    # process r holds prompt places r, r + 2 (the trainer's split), as local groups 0 and 1
    idx = [torch.cat([torch.arange(p * k_size, (p + 1) * k_size) for p in (r, r + 2)]) for r in range(2)]
    local_groups = torch.arange(2).repeat_interleave(k_size)

    def gather(t):  # what accelerate's gather returns: process 0's rows, then process 1's
        for proxy, aux, _ in data:
            for full in (proxy, aux):
                for r in range(2):
                    if torch.equal(t, full[idx[r]]):
                        return torch.cat([full[idx[0]], full[idx[1]]])
        raise AssertionError("unexpected tensor")

    for r in range(2):
        two, k_two = gates(GARDO(cfg, ctx(process_index=r, num_processes=2, gather=gather)), idx[r], local_groups)
        assert k_two == k_one
        for g2, g1 in zip(two, one, strict=True):
            assert torch.equal(g2, g1[idx[r]])
    alone = [gates(GARDO(cfg, ctx()), idx[r], local_groups)[0][0] for r in range(2)]
    assert any(not torch.equal(alone[r], one[0][idx[r]]) for r in range(2))


def test_gardo_gate_statistic_is_the_mean_of_the_non_negative_uncertainties():
    """The batch mean of U is 0 for every batch (win rates average 1/2), so the gate follows the mean
    of the U ≥ 0 (released code). Hand-computed: proxy [0, 1, 2, 3] against auxiliary [3, 2, 1, 0]
    gives U = [−1, −1/3, 1/3, 1], statistic 2/3; with auxiliary = proxy, U = 0 and statistic 0."""
    from types import SimpleNamespace

    from alignbench.algorithms.gardo import batch_uncertainty

    proxy = torch.tensor([0.0, 1.0, 2.0, 3.0])
    u = uncertainty(proxy, [proxy.flip(0)])
    torch.testing.assert_close(u, torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0], dtype=torch.float64))
    assert float(u.mean()) == pytest.approx(0.0, abs=1e-15)
    assert batch_uncertainty(u) == pytest.approx(2 / 3)
    assert batch_uncertainty(torch.tensor([-0.5, -0.1])) == 0.0
    algo = GARDO(GARDO.Config(gate_init=0.1), ctx(group_size=4))
    g = torch.zeros(4, dtype=torch.long)
    ks = []
    for aux in (proxy.flip(0), proxy, proxy.flip(0), proxy.flip(0)):
        r = Rewards(proxy, {"partial": proxy, "accuracy": aux}, g, {"partial": 1.0, "accuracy": 0.0}, torch.eye(4))
        algo.advantages(SimpleNamespace(incidence=torch.eye(4)), r, Progress(0, 9))
        ks.append((algo.metrics(Progress(0, 9))["gardo_uncertainty"], algo.gate.k))
    # 2/3 first (kept); 0 < min → k × 0.9; 2/3 = max → same; 2/3 again → same
    assert ks == [(pytest.approx(2 / 3), 0.1), (0.0, pytest.approx(0.09)), (pytest.approx(2 / 3), pytest.approx(0.09)),
                  (pytest.approx(2 / 3), pytest.approx(0.09))]


def test_gardo_reference_reset_rule():
    algo = GARDO(GARDO.Config(reset_kl=1e-4, reset_steps=100), ctx())
    assert not algo.reset_reference({"kl": 5e-5}, 99)
    assert algo.reset_reference({"kl": 2e-4}, 3)
    assert algo.reset_reference({"kl": 0.0}, 100)


def test_snapshot_reference_uses_the_stored_adapter_values_without_touching_the_policy():
    bb = FluxBackbone(build_tiny_pipeline(MICRO, seed=2), 64, 64, max_sequence_length=20, guidance_scale=1.0)
    params = bb.add_lora(4, 4, seed=0)
    emb = bb.encode_prompts(["a photo of a red ring"])
    x = bb.initial_noise([0])
    snap = bb.lora_state()  # B = 0: same as the base model
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        policy = bb.velocity(x, 0.5, emb)
        with bb.reference(snap):
            ref = bb.velocity(x, 0.5, emb)
        with bb.reference():
            base = bb.velocity(x, 0.5, emb)
    torch.testing.assert_close(ref, base)
    assert not torch.allclose(policy, ref)
    torch.testing.assert_close(bb.velocity(x, 0.5, emb).detach(), policy)  # policy weights untouched


# ------------------------------------------------------------------------------------------ end to end
TINY_RUN = ["--iterations", "3", "--set", "eval.max_prompts=2", "--set", "eval.images_per_tag=null", "--set", "eval.images_per_prompt=2",
            "--set", "eval.steps=3", "--set", "protocol.train_steps=4", "--set", "protocol.group_size=4",
            "--set", "protocol.prompts_per_iteration=1"]


@pytest.mark.parametrize("algo,extra,nfe,edges", [
    # one root, k = 2 children at w = 2 window steps from i: i + 1 + k + k²·(T − i − w) = 11 − 3i
    ("treegrpo", ["--set", "algo.fanout=2", "--set", "algo.window=2"], lambda i: 11 - 3 * i, 6),
    # 4 roots sharing one noise, window of 2 from l: l + 1 + 4·(T − l − 1) = 13 − 3l
    ("mixgrpo", ["--set", "algo.window=2", "--set", "algo.shift_every=1"], lambda i: 13 - 3 * i, 8),
    # Flow-GRPO's plan: 4 roots × 4 steps, the first ⌊0.99·4⌋ = 3 trained
    ("gardo", [], lambda i: 16, 12),
])
def test_each_baseline_runs_end_to_end_with_the_analytic_nfe(tmp_path, algo, extra, nfe, edges):
    import json

    from typer.testing import CliRunner

    from alignbench.cli import app

    r = CliRunner().invoke(app, ["run", "--algo", algo, "--task", "geneval", "--out", str(tmp_path), *TINY_RUN, *extra])
    assert r.exit_code == 0, r.output
    (run_json,) = tmp_path.rglob("run.json")
    rows = [json.loads(line) for line in (run_json.parent / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        start = row.get("window_start", 0)
        assert row["nfe_rollout"] == nfe(start) and row["trained_edges"] == edges and row["leaves"] == 4
    if algo == "mixgrpo":  # progressive with τ = 1: l = 0, 1, then capped at T − w − 1 = 1
        assert [row["window_start"] for row in rows] == [0, 1, 1]
    if algo == "gardo":
        assert all(row["gardo_gate_k"] > 0 and row["gardo_aux"] == 2 and "reference_reset" in row for row in rows)
    summary = json.loads(run_json.read_text())
    assert summary["status"] == "finished" and (run_json.parent / "eval.json").exists()
