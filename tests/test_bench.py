"""`alignbench bench`: per-iteration cost of each algorithm, with NFE checked against the plan."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignbench.cli import app

SMALL = ["--set", "protocol.prompts_per_iteration=1", "--set", "protocol.group_size=4",
         "--set", "protocol.train_steps=6"]


def test_bench_reports_phases_and_counts_that_match_the_plans(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--algo", "flow_grpo,mixgrpo", "--iterations", "1", "--out",
                                   str(tmp_path), *SMALL])
    assert res.exit_code == 0, res.output
    (jpath,) = tmp_path.rglob("tiny-shapes.json")
    result = json.loads(jpath.read_text())
    assert (jpath.with_suffix(".md")).is_file()
    by = {a["algorithm"]: a for a in result["algorithms"]}
    assert set(by) == {"flow_grpo", "mixgrpo"}
    for a in by.values():
        assert a["analytic_ok"] and len(a["rows"]) == 2  # the warm-up and one measured iteration
        s = a["seconds"]
        assert s["total"]["min"] > 0 and s["rollout"]["median"] + s["reward"]["median"] + s["update"]["median"] \
            <= s["total"]["median"] + 1e-6
    # Flow-GRPO by hand: 4 independent roots × 6 SDE/ODE steps; the first ⌊0.99·6⌋ = 5 steps trained
    fg = by["flow_grpo"]
    assert fg["nfe_rollout_per_iteration"] == 24 and fg["trained_edges_per_iteration"] == 20
    assert "| flow_grpo |" in res.output and "| 1.00 |" in res.output  # its own ratio
    bad = CliRunner().invoke(app, ["bench", "--algo", "flow_grpo", "--set", "algo.lr=1"])
    assert bad.exit_code == 2 and "allowed sections: protocol, model" in bad.output


@pytest.mark.parametrize("model,extra", [
    ("sd35m-random", ["model.scale=0.04"]),
    # one FLUX double and one single block are 0.55B parameters: minutes to build on 2 cores
    pytest.param("flux-dev-random", ["model.scale=0.02", "model.max_sequence_length=8"], marks=pytest.mark.slow)])
def test_bench_runs_the_real_architectures_scaled_down_with_no_download(tmp_path, model, extra):
    """sd35m-random and flux-dev-random: the published transformer configs with one block of each
    kind (model.scale), random weights and text embeddings, at 64² with short text, the weight-free
    bench task; the forward FLOPs are the analytic count of the built config."""
    from alignbench.flops import sd3_forward_flops

    sets = [*extra, "model.height=64", "model.width=64", "model.dtype=float32", "protocol.group_size=2",
            "protocol.prompts_per_iteration=1", "protocol.train_steps=3", "protocol.lora_rank=2"]
    if model == "sd35m-random":
        sets.append("model.max_sequence_length=8")
    # GARDO needs diversity features: on the random models they are the weight-free pooled pixels
    algos = "flow_grpo,gardo" if model == "sd35m-random" else "flow_grpo"
    args = ["bench", "--model", model, "--algo", algos, "--iterations", "1", "--out", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads((next(tmp_path.rglob(f"{model}.json"))).read_text())
    a = result["algorithms"][0]
    assert all(b["analytic_ok"] for b in result["algorithms"]) and len(result["algorithms"]) == len(algos.split(","))
    assert result["task"] == "bench" and a["analytic_ok"] and a["mfu_rollout"] is None
    assert a["nfe_rollout_per_iteration"] == 2 * 3 * (2 if model == "sd35m-random" else 1)  # CFG 4.5: 2 rows
    assert a["rollout_tflops_per_s"] > 0
    if model == "sd35m-random":
        from alignbench.models.random_arch import transformer_config

        cfg = transformer_config("sd3", 0.04)
        assert cfg["num_layers"] == 1 and cfg["dual_attention_layers"] == (0,)
        assert a["forward_gflops"] == sd3_forward_flops(cfg, 16, 77 + 8) / 1e9


def test_bench_speedups_both_measures_off_and_on_with_the_same_rewards(tmp_path):
    """--speedups both: each algorithm off then on from the same seed. TreeGRPO's 3-ary window trains
    3 + 9 + 27 edges per prompt from 1 + 3 + 9 nodes, so shared nodes cut the update's transformer
    rows by exactly 3 while every iteration's reward mean stays the same."""
    res = CliRunner().invoke(app, ["bench", "--algo", "treegrpo", "--iterations", "1", "--speedups", "both",
                                   "--out", str(tmp_path), "--set", "protocol.prompts_per_iteration=1",
                                   "--set", "protocol.group_size=27", "--set", "protocol.train_steps=6"])
    assert res.exit_code == 0, res.output
    result = json.loads(next(tmp_path.rglob("tiny-shapes.json")).read_text())
    off, on = result["algorithms"]
    assert (off["speedups"], on["speedups"]) == (False, True)
    assert off["trained_edges_per_iteration"] == on["trained_edges_per_iteration"] == 39
    assert off["update_nfe_per_iteration"] == 3 * on["update_nfe_per_iteration"] > 0
    assert off["reward_means"] == on["reward_means"]
    assert "| treegrpo | on |" in res.output and "| yes |" in res.output
    bad = CliRunner().invoke(app, ["bench", "--speedups", "fast"])
    assert bad.exit_code == 2 and "--speedups: 'fast' is not allowed; allowed: on, off, both" in bad.output


def test_bench_append_adds_algorithms_to_the_table_and_refuses_a_different_protocol(tmp_path):
    """--append keeps the other algorithms' rows, replaces the re-measured one, lists both commands;
    a table measured under other --set values is refused in one line naming the field."""
    base = ["bench", "--iterations", "1", "--out", str(tmp_path), *SMALL]
    assert CliRunner().invoke(app, [*base, "--algo", "flow_grpo"]).exit_code == 0
    res = CliRunner().invoke(app, [*base, "--algo", "mixgrpo", "--append"])
    assert res.exit_code == 0, res.output
    result = json.loads(next(tmp_path.rglob("tiny-shapes.json")).read_text())
    assert [a["algorithm"] for a in result["algorithms"]] == ["flow_grpo", "mixgrpo"]
    assert len(result["runs"]) == 2 and all(r["commit"] and r["date"] for r in result["runs"])
    md = next(tmp_path.rglob("tiny-shapes.md")).read_text()
    assert "| flow_grpo |" in md and "| mixgrpo |" in md and "; then `" in md
    from alignbench.bench import table_stem

    assert table_stem("tiny-shapes", "ocr") == "tiny-shapes-ocr" and table_stem("flux-dev-random", "bench") == "flux-dev-random"
    bad = CliRunner().invoke(app, ["bench", "--iterations", "1", "--out", str(tmp_path), "--algo", "tmpo", "--append"])
    assert bad.exit_code == 2 and "--append: the" in bad.output and "has overrides" in bad.output
