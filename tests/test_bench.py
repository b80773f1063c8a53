"""`alignbench bench`: per-iteration cost of each algorithm, with NFE checked against the plan."""

from __future__ import annotations

import json

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
