"""The update's memory plan (issue 19, item 3): the micro-batch from a budget, and a run with a
budget trains exactly like one without (micro-batching is exact)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignbench.cli import app
from alignbench.errors import UserError
from alignbench.training import memory


def test_plan_fits_the_budget_and_refuses_what_cannot_fit():
    gib = memory.GIB
    assert memory.plan_micro_batch(10 * gib, 4 * gib, 0.5 * gib, 100) == 12  # (10 − 4) / 0.5
    assert memory.plan_micro_batch(10 * gib, 4 * gib, 0.5 * gib, 7) == 7  # no more than there are
    with pytest.raises(UserError, match=r"protocol.update_memory_gb: 4.0 GiB cannot hold one trained transition "
                                        r"of this model \(needs 4.5 GiB\)"):
        memory.plan_micro_batch(4 * gib, 4 * gib, 0.5 * gib, 10)


TINY = ["--iterations", "1", "--set", "eval.max_prompts=1", "--set", "eval.images_per_tag=null", "--set",
        "eval.images_per_prompt=2", "--set", "eval.steps=3", "--set", "protocol.train_steps=4", "--set",
        "protocol.group_size=4", "--set", "protocol.prompts_per_iteration=1"]


def test_a_budgeted_run_picks_its_micro_batch_and_trains_identically(tmp_path, monkeypatch):
    """CUDA's peak-memory probe replaced by a fixed measurement (base 1 GiB, 0.25 GiB per transition):
    a 2 GiB budget gives micro-batches of 4 of Flow-GRPO's 12 trained transitions, and the metrics
    (losses, rewards, gradient norms) equal those of the run with the default micro-batch."""
    monkeypatch.setattr(memory, "supported", lambda device: True)
    monkeypatch.setattr(memory, "measure_update_memory",
                        lambda *a, **k: (1.0 * memory.GIB, 0.25 * memory.GIB))
    rows = {}
    for name, extra in (("plain", []), ("budget", ["--set", "protocol.update_memory_gb=2"])):
        out = tmp_path / name
        res = CliRunner().invoke(app, ["run", "--algo", "flow_grpo", "--task", "geneval", "--out", str(out),
                                       *TINY, *extra])
        assert res.exit_code == 0, res.output
        (path,) = out.rglob("metrics.jsonl")
        rows[name] = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["micro_batch"] for r in rows["budget"]] == [4]
    for a, b in zip(rows["plain"], rows["budget"], strict=True):
        for k in ("loss", "grad_norm", "reward_mean", "clip_frac", "kl"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
