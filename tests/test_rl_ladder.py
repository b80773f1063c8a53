"""The RL sanity ladder's first rung (issue 32, docs/rl_ladder.md), slow: `pytest -m slow`.

One train prompt, a dense reward (mean brightness, `--task sanity-brightness`), 40 iterations on
the shipped `tiny-shapes` weights: TMPO (with the centred advantage) and Flow-GRPO must raise the
reward, in training and on the evaluation sampler's fresh noises. About 2 min (TMPO) and 9 min
(Flow-GRPO) on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alignbench.cli import app

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("algo, sets", [("tmpo", ["algo.center=true", "algo.lr=3e-3"]),
                                        ("flow_grpo", ["algo.lr=3e-3"])])
def test_a_dense_reward_on_one_prompt_rises_within_40_iterations(tmp_path, algo, sets):
    # no --threads: in-process it would change torch's thread count for the tests that follow
    args = ["run", "--algo", algo, "--task", "sanity-brightness", "--iterations", "40", "--seed", "5",
            "--out", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (run,) = [p.parent for p in Path(tmp_path).rglob("summary.json")]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = (np.mean([r["reward_mean"] for r in rows[a:b]]) for a, b in ((0, 10), (30, 40)))
    summary = json.loads((run / "summary.json").read_text())
    base = summary["base"]["metrics"]["overall"]["brightness"]
    final = summary["final"]["metrics"]["overall"]["brightness"]
    assert last > first + 0.1, (first, last)
    assert final > base + 0.1, (base, final)
