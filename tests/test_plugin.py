"""The third-party plugin path: the example package in examples/alignbench-rloo, seen as an installed
distribution (entry point in group ``alignbench.algorithms``) and as a dotted path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from alignbench.cli import app

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "alignbench-rloo"
TINY = ["--iterations", "2", "--set", "eval.max_prompts=2", "--set", "eval.images_per_tag=null", "--set", "eval.images_per_prompt=2", "--set", "eval.steps=3",
        "--set", "protocol.train_steps=4", "--set", "protocol.group_size=3", "--set", "protocol.prompts_per_iteration=1"]


@pytest.fixture()
def installed_example(tmp_path, monkeypatch):
    """A fake installed distribution: the example's sources on sys.path plus a dist-info directory
    carrying the entry point its pyproject.toml declares."""
    import tomllib

    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["alignbench.algorithms"]
    dist = tmp_path / "alignbench_rloo-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: alignbench-rloo\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[alignbench.algorithms]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    from alignbench.registry import algorithms

    # the registry reads entry points once per process (a real plugin is installed before start-up);
    # this fake distribution appears mid-process, so make the registry read them again
    algorithms._entry_points_loaded = False
    yield eps
    for mod in [m for m in sys.modules if m.startswith("alignbench_rloo")]:
        sys.modules.pop(mod)
    for name in list(eps):
        algorithms._entries.pop(name, None)
        algorithms._resolved.pop(name, None)
    algorithms._entry_points_loaded = False


def test_leave_one_out_advantage_known_answer(installed_example):
    from alignbench_rloo.algorithm import leave_one_out

    r = torch.tensor([1.0, 0.0, 0.5, 2.0, 4.0])
    g = torch.tensor([0, 0, 0, 1, 1])
    torch.testing.assert_close(leave_one_out(r, g), torch.tensor([0.75, -0.75, 0.0, -2.0, 2.0]))


def test_the_example_plugin_is_listed_and_runs_by_entry_point_and_by_dotted_path(installed_example, tmp_path):
    assert installed_example == {"rloo": "alignbench_rloo.algorithm:RLOO"}
    listed = CliRunner().invoke(app, ["list", "algorithms"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and "rloo" in listed.output and "leave-one-out" in listed.output
    for algo in ("rloo", "alignbench_rloo.algorithm:RLOO"):
        out = tmp_path / algo.replace(":", "_")
        r = CliRunner().invoke(app, ["run", "--algo", algo, "--task", "geneval", "--out", str(out), *TINY])
        assert r.exit_code == 0, r.output
        (run_json,) = out.rglob("run.json")
        assert ":" not in str(run_json.relative_to(out))
        rows = [json.loads(line) for line in (run_json.parent / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2
        # plan: 3 independent roots × 2 trained window steps; rollout NFE = 3 roots × 4 steps
        assert all(r["trained_edges"] == 6 and r["nfe_rollout"] == 12 and r["leaves"] == 3 for r in rows)
        assert (run_json.parent / "eval.json").exists()
