"""`alignbench leaderboard`: built only from run directories, with known means, intervals and
probabilities of improvement; broken run directories are named and left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alignbench.cli import app
from alignbench.reporting.leaderboard import build_leaderboard, collect_runs


def _summary(acc: float, lgmd: float) -> dict:
    return {"metrics": {"overall": {"n": 252, "accuracy": acc, "partial": acc + 0.1}}, "lgmd": lgmd,
            "cosine_diversity": 0.5, "vendi": 2.0}


def _write_run(root: Path, algo: str, seed: int, acc: float, *, status="finished", eval_text=None,
               sec=3.0) -> Path:
    d = root / "geneval" / "tiny-shapes" / algo / f"seed{seed}-20261122T000000Z"
    d.mkdir(parents=True)
    cfg = {"algorithm": algo, "task": "geneval", "model": {"name": "tiny-shapes"}}
    (d / "run.json").write_text(json.dumps({"kind": "train", "status": status, "seed": seed, "config": cfg}))
    (d / "eval_base.json").write_text(json.dumps(_summary(0.10, 0.25)))
    (d / "eval.json").write_text(eval_text if eval_text is not None else json.dumps(_summary(acc, 0.2)))
    (d / "summary.json").write_text(json.dumps({"cost": {"seconds_per_iteration": sec, "nfe_per_iteration": 500.0,
                                                         "trained_edges_per_iteration": 144.0,
                                                         "peak_memory_mb": 900.0}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"iteration": i, "reward_mean": acc + 0.01 * i,
                                                         "lgmd_train": 0.1}) + "\n" for i in range(3)))
    return d


@pytest.fixture()
def runs(tmp_path):
    for s, acc in enumerate([0.12, 0.14, 0.16]):
        _write_run(tmp_path, "tmpo", s, acc)
    for s, acc in enumerate([0.08, 0.11, 0.09]):
        _write_run(tmp_path, "flow_grpo", s, acc, sec=20.0)
    bad = _write_run(tmp_path, "gardo", 0, 0.5, eval_text="{not json")
    _write_run(tmp_path, "gardo", 1, 0.9, status="running")  # in progress: ignored
    (tmp_path / "geneval" / "tiny-shapes" / "gardo" / "seed2-x").mkdir()
    missing = _write_run(tmp_path, "mixgrpo", 0, 0.5)
    (missing / "eval.json").unlink()
    return tmp_path, bad, missing


def test_leaderboard_aggregates_seeds_with_intervals_and_probability_of_improvement(runs):
    root, bad, missing = runs
    found = collect_runs(root, "geneval")
    assert sorted((r.algo, r.seed) for r in found.runs) == [("flow_grpo", 0), ("flow_grpo", 1), ("flow_grpo", 2),
                                                           ("tmpo", 0), ("tmpo", 1), ("tmpo", 2)]
    assert len(found.warnings) == 2 and any(str(bad) in w for w in found.warnings)
    assert any(str(missing) in w and "eval.json" in w for w in found.warnings)
    frame = build_leaderboard(found.runs)
    assert list(frame["algorithm"]) == ["base model", "tmpo", "flow_grpo"]
    tmpo = frame.iloc[1]
    assert tmpo["accuracy"] == pytest.approx(0.14) and tmpo["seeds"] == 3
    assert 0.12 <= tmpo["accuracy_low"] < 0.14 < tmpo["accuracy_high"] <= 0.16
    assert tmpo["p_improve"] == 1.0  # every seed beats the base model's 0.10
    fg = frame.iloc[2]
    assert fg["p_improve"] == pytest.approx(1 / 3) and fg["seconds_per_iteration"] == pytest.approx(20.0)
    assert frame.iloc[0]["accuracy"] == pytest.approx(0.10) and frame.iloc[0]["lgmd"] == pytest.approx(0.25)
    assert frame.attrs["directions"]["accuracy"] == "↑" and frame.attrs["directions"]["seconds_per_iteration"] == "↓"
    from alignbench.reporting.leaderboard import to_markdown

    del found.runs[0].values["vendi"]  # an older run without this column
    md = to_markdown(build_leaderboard(found.runs))
    line = next(x for x in md.splitlines() if x.startswith(f"| {found.runs[0].algo} |"))
    assert "2.000 [2.000, 2.000] (n=2)" in line
    vs = build_leaderboard(found.runs, baseline="flow_grpo")
    assert vs.iloc[1]["p_improve"] == 1.0  # 0.12, 0.14, 0.16 against 0.08, 0.11, 0.09
    with pytest.raises(ValueError, match="allowed: base, flow_grpo, tmpo"):
        build_leaderboard(found.runs, baseline="gardo")


def test_leaderboard_command_formats_and_warnings(runs):
    root, bad, _ = runs
    r = CliRunner().invoke(app, ["leaderboard", "--task", "geneval", "--root", str(root), "--format", "markdown"])
    assert r.exit_code == 0, r.output
    assert "| tmpo | 3 | 0.140 [" in r.output and "accuracy ↑" in r.output and "s/it ↓" in r.output
    assert "(n=" not in r.output  # every seed reports every column here
    assert f"warning: {bad}" in r.output
    csv = CliRunner().invoke(app, ["leaderboard", "--root", str(root), "--format", "csv"])
    assert csv.stdout.splitlines()[0].startswith("algorithm,seeds,accuracy") and "warning" in csv.stderr
    js = CliRunner().invoke(app, ["leaderboard", "--root", str(root), "--format", "json"])
    payload = json.loads(js.stdout)
    assert payload["primary"] == "accuracy" and [row["algorithm"] for row in payload["rows"]][0] == "base model"
    table = CliRunner().invoke(app, ["leaderboard", "--root", str(root)], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "tmpo" in table.output
    plotted = CliRunner().invoke(app, ["leaderboard", "--root", str(root), "--format", "csv", "--plots",
                                       str(root / "plots")])
    assert plotted.exit_code == 0 and "wrote 8 plot files" in plotted.stderr
    for name in ("pareto_lgmd", "pareto_cosine_diversity", "pareto_seconds_per_iteration", "curves"):
        assert (root / "plots" / f"{name}.png").stat().st_size > 1000 and (root / "plots" / f"{name}.svg").exists()
    wrong = CliRunner().invoke(app, ["leaderboard", "--root", str(root), "--format", "xml"])
    assert wrong.exit_code == 2 and "allowed: table, markdown, csv, json" in wrong.output
    none = CliRunner().invoke(app, ["leaderboard", "--task", "ocr", "--root", str(root)])
    assert none.exit_code != 0 and "no finished runs of task 'ocr'" in none.output


def test_pareto_front_known_answers():
    import numpy as np

    from alignbench.reporting.plots import pareto_front

    ys = np.array([0.10, 0.20, 0.15, 0.05, 0.20])
    xs = np.array([0.30, 0.10, 0.20, 0.40, 0.05])
    # x higher is better: index 4 (0.05, 0.20) is beaten by index 1 (0.10, 0.20) on x with equal y
    assert pareto_front(xs, ys, x_higher_better=True) == [1, 2, 0, 3]
    # x lower is better (seconds): index 4 is the cheapest at the top reward and beats everything
    assert pareto_front(xs, ys, x_higher_better=False) == [4]
    # one point that beats every other on both axes is the whole front (the geneval LGMD plot's case)
    assert pareto_front(np.array([0.3, 0.2, 0.25]), np.array([0.09, 0.07, 0.08]), True) == [0]


def _write_rows(run_dir: Path, name: str, accuracy: list[float]) -> None:
    rows = [{"prompt_index": i // 2, "image_index": i % 2, "seed": 100 + i, "tag": "single_object", "accuracy": a,
             "partial": a, "reasons": [], "cost_nfe_per_iteration": 5.0} for i, a in enumerate(accuracy)]
    (run_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_paired_image_counts_and_sign_test(tmp_path):
    from alignbench.reporting.leaderboard import paired_counts, to_markdown

    base = [1, 0, 0, 1, 0, 0]
    d0 = _write_run(tmp_path, "tmpo", 0, 0.3)
    _write_rows(d0, "eval_base.jsonl", base)
    _write_rows(d0, "eval.jsonl", [1, 1, 1, 0, 0, 0])  # images 1, 2 better; image 3 worse
    d1 = _write_run(tmp_path, "tmpo", 1, 0.3)
    _write_rows(d1, "eval_base.jsonl", base)
    _write_rows(d1, "eval.jsonl", [1, 1, 0, 1, 1, 1])  # images 1, 4, 5 better
    assert paired_counts(d0) == {"accuracy": (2, 1), "partial": (2, 1)}  # seed and cost_* are not metrics
    d2 = _write_run(tmp_path, "tmpo", 2, 0.3)
    _write_rows(d2, "eval_base.jsonl", base)
    _write_rows(d2, "eval.jsonl", [1, 1, 1])  # a different set of images: not paired
    assert paired_counts(d2) == {}
    frame = build_leaderboard(collect_runs(tmp_path).runs)
    row = frame.iloc[1]
    # pooled over seeds 0 and 1: 5 better, 1 worse; sign test 2·(1+6)/64
    assert (row["paired_better"], row["paired_worse"]) == (5, 1)
    assert row["paired_p"] == pytest.approx(14 / 64)
    assert "+5/−1 (p=0.22)" in to_markdown(frame)


def test_one_algorithm_has_one_colour_in_every_plot(runs):
    from matplotlib.colors import to_hex

    from alignbench.reporting.plots import algorithm_colors

    # fixed for the built-ins whatever the subset or order; others take the free colours in sorted order
    assert algorithm_colors(["tmpo", "flow_grpo"]) == {"tmpo": "C4", "flow_grpo": "C0"}
    assert algorithm_colors(["zeta", "gardo", "alpha"]) == {"zeta": "C6", "gardo": "C3", "alpha": "C5"}
    root = runs[0]
    r = CliRunner().invoke(app, ["leaderboard", "--root", str(root), "--format", "csv", "--plots", str(root / "p")])
    assert r.exit_code == 0, r.output
    # the leaderboard ranks tmpo first, the curves sort by name: both draw tmpo in C4 and flow_grpo in C0
    tmpo, flow = to_hex("C4"), to_hex("C0")
    for name in ("pareto_lgmd", "curves"):
        svg = (root / "p" / f"{name}.svg").read_text()
        assert tmpo in svg and flow in svg and to_hex("C1") not in svg, name
