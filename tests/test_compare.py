"""`alignbench compare`: matched configs, skip finished runs, resume interrupted ones, render the
leaderboard and plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from alignbench.cli import app

TINY = ["--iterations", "2", "--set", "eval.max_prompts=2", "--set", "eval.images_per_tag=null", "--set", "eval.images_per_prompt=2", "--set", "eval.steps=3",
        "--set", "protocol.train_steps=6", "--set", "protocol.group_size=4", "--set", "protocol.prompts_per_iteration=1"]


def _runs(root: Path) -> dict[str, float]:
    return {str(p.parent): p.stat().st_mtime for p in root.rglob("run.json")}


def test_compare_runs_what_is_missing_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path):
    out, report = tmp_path / "runs", tmp_path / "report"
    args = ["compare", "--task", "geneval", "--algos", "flow_grpo,mixgrpo", "--seeds", "2", "--out", str(out),
            "--report", str(report), *TINY, "--set", "model.true_cfg_scale=1"]
    first = CliRunner().invoke(app, [*args, "--set", "protocol.lora_rank=4"])
    assert first.exit_code == 0, first.output
    runs = _runs(out)
    assert len(runs) == 4
    configs = [json.loads((Path(d) / "run.json").read_text())["config"] for d in runs]
    # matched: one protocol and evaluation for all, each algorithm its own hyperparameters
    assert len({json.dumps(c["protocol"], sort_keys=True) for c in configs}) == 1
    assert {c["protocol"]["lora_rank"] for c in configs} == {4}
    assert {c["algo"]["lr"] for c in configs if c["algorithm"] == "mixgrpo"} == {3e-4}
    md = (report / "LEADERBOARD.md").read_text()
    assert "alignbench compare --task geneval" in md and "| flow_grpo | 2 |" in md and "| mixgrpo | 2 |" in md
    assert "| base model |" in md and "P(>base) on accuracy" in md and md.index("accuracy ↑") < md.index("partial ↑")
    # provenance of the runs themselves: their time span (from run.json) and code version
    starts = sorted(json.loads((Path(d) / "run.json").read_text())["started"] for d in runs)
    commit = json.loads((Path(next(iter(runs))) / "run.json").read_text())["environment"]["git_commit"]
    assert f"runs made {starts[0][:16].replace('T', ' ')} – " in md
    assert f"alignbench commit(s) {str(commit or 'unknown')[:7]}" in md
    for name in ("pareto_lgmd", "pareto_cosine_diversity", "pareto_seconds_per_iteration", "curves"):
        assert (report / f"{name}.png").stat().st_size > 1000 and (report / f"{name}.svg").exists()
    # the published run files: the leaderboard over them reproduces LEADERBOARD.md's table exactly
    published = sorted(p.relative_to(report / "runs").as_posix() for p in (report / "runs").rglob("run.json"))
    assert published == ["flow_grpo/seed0/run.json", "flow_grpo/seed1/run.json", "mixgrpo/seed0/run.json",
                         "mixgrpo/seed1/run.json"]
    row = json.loads((report / "runs" / "flow_grpo" / "seed0" / "eval.jsonl").read_text().splitlines()[0])
    assert "detections" not in row and {"prompt_index", "image_index", "accuracy", "partial"} <= set(row)
    again_md = CliRunner().invoke(app, ["leaderboard", "--task", "geneval", "--root", str(report / "runs"),
                                        "--format", "markdown"])
    assert again_md.exit_code == 0, again_md.output
    table = md[md.index("| algorithm"):]
    assert again_md.output == table

    again = CliRunner().invoke(app, [*args, "--set", "protocol.lora_rank=4"])
    assert again.exit_code == 0, again.output
    assert _runs(out) == runs and again.output.count("skip (finished)") == 4  # nothing redone

    # an interrupted run (status left by Ctrl-C, final evaluation missing) is resumed, the rest kept
    victim = Path(sorted(runs)[0])
    meta = json.loads((victim / "run.json").read_text())
    meta["status"] = "interrupted"
    (victim / "run.json").write_text(json.dumps(meta))
    (victim / "eval.json").unlink()
    third = CliRunner().invoke(app, [*args, "--set", "protocol.lora_rank=4"])
    assert third.exit_code == 0, third.output
    assert "resume (interrupted)" in third.output and third.output.count("skip (finished)") == 3
    after = _runs(out)
    assert set(after) == set(runs)
    assert all(after[d] == runs[d] for d in runs if d != str(victim)) and after[str(victim)] > runs[str(victim)]
    assert json.loads((victim / "run.json").read_text())["status"] == "finished" and (victim / "eval.json").exists()

    # another protocol is another comparison: new runs, the old ones untouched
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0 and dry.output.count("new") >= 4 and _runs(out) == after


def test_compare_rejects_algorithm_overrides_and_unknown_algorithms(tmp_path):
    r = CliRunner().invoke(app, ["compare", "--algos", "tmpo", "--set", "algo.lr=1", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "compare shares protocol.*" in r.output
    r = CliRunner().invoke(app, ["compare", "--algos", "tmpo,flowgrpo", "--out", str(tmp_path), "--dry-run"])
    assert r.exit_code == 2 and "did you mean 'flow_grpo'" in r.output


def test_run_locks_are_exclusive_name_their_holder_and_die_with_it(tmp_path):
    import subprocess
    import sys

    from alignbench.reporting.rundir import RunBusyError, exclusive_lock, lock_holder

    path = tmp_path / "run" / ".lock"
    assert lock_holder(path) is None
    with exclusive_lock(path, "run directory X"):
        holder = lock_holder(path)
        assert holder is not None and holder.startswith(f"pid {os.getpid()} on ")
        try:
            with exclusive_lock(path, "run directory X"):
                raise AssertionError("a second holder got the lock")
        except RunBusyError as exc:
            assert str(exc).startswith(f"run directory X is in use by another process (pid {os.getpid()} on ")
    assert lock_holder(path) is None  # released when the block ends
    # a process killed while holding the lock leaves the file but not the lock
    code = ("import sys, time; from alignbench.reporting.rundir import exclusive_lock\n"
            f"with exclusive_lock({str(path)!r}, 'x'):\n    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert lock_holder(path) == f"pid {child.pid} on {__import__('socket').gethostname()}"
    finally:
        child.kill()
        child.wait()
    assert path.exists() and lock_holder(path) is None


def test_compare_leaves_a_run_claimed_by_another_process_alone(tmp_path):
    from alignbench.reporting.rundir import config_lock_path, exclusive_lock, run_lock_path
    from alignbench.training.trainer import resolve_run_config

    out, report = tmp_path / "runs", tmp_path / "report"
    args = ["compare", "--task", "geneval", "--algos", "flow_grpo", "--seeds", "2", "--out", str(out),
            "--report", str(report), *TINY]
    sets = [TINY[i + 1] for i, x in enumerate(TINY) if x == "--set"]
    seed1 = resolve_run_config("flow_grpo", "geneval", "tiny-shapes", 1, overrides=sets, iterations=2)
    with exclusive_lock(config_lock_path(out, seed1), "x"):  # as a second compare would hold it
        dry = CliRunner().invoke(app, [*args, "--dry-run"])
        assert dry.exit_code == 0 and f"running elsewhere (pid {os.getpid()}" in dry.output.replace("\n", "")
        first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "[2/2] flow_grpo seed 1: skipped" in first.output and "still running in other processes" in first.output
    runs = _runs(out)
    assert [json.loads((Path(d) / "run.json").read_text())["seed"] for d in runs] == [0]
    assert not (report / "LEADERBOARD.md").exists()  # an incomplete comparison is not rendered

    # a run another process held and has finished since counts as done at the end of this compare
    from alignbench.cli import _still_busy
    from alignbench.reporting.rundir import new_run_dir, write_run_json

    done: list[Path] = []
    assert _still_busy(out, [seed1], done) == [seed1] and done == []
    other = new_run_dir(tmp_path / "elsewhere", "geneval", "tiny-shapes", "flow_grpo", 1)
    write_run_json(other, "train", seed1, 1, "finished")
    assert _still_busy(tmp_path / "elsewhere", [seed1], done) == [] and done == [other]

    second = CliRunner().invoke(app, args)  # the claim is gone: seed 1 runs now, seed 0 is kept
    assert second.exit_code == 0, second.output
    assert second.output.count("skip (finished)") == 1 and len(_runs(out)) == 2
    assert "| flow_grpo | 2 |" in (report / "LEADERBOARD.md").read_text()

    # a run directory held by a live process is refused by `run --resume`, in one line
    victim = Path(sorted(_runs(out))[0])
    meta = json.loads((victim / "run.json").read_text())
    (victim / "run.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    with exclusive_lock(run_lock_path(victim), "x"):
        r = CliRunner().invoke(app, ["run", "--resume", str(victim)])
    assert r.exit_code == 2 and f"run directory {victim} is in use by another process (pid {os.getpid()}" in \
        r.output.replace("\n", "")


def test_runs_made_on_other_weights_are_not_matched(tmp_path):
    """The model's weights revision is part of the run config: after the shipped weights change
    (a new ``revision`` label), ``compare`` starts new runs instead of resuming old ones."""
    from alignbench.reporting.rundir import new_run_dir, write_run_json
    from alignbench.training.trainer import resolve_run_config

    out = tmp_path / "runs"
    sets = [TINY[i + 1] for i, x in enumerate(TINY) if x == "--set"]
    cfg = resolve_run_config("flow_grpo", "geneval", "tiny-shapes", 0, overrides=sets, iterations=2)
    assert cfg["model"]["revision"] == "v2d"
    other = {**cfg, "model": {**cfg["model"], "revision": "stage0"}}
    write_run_json(new_run_dir(out, "geneval", "tiny-shapes", "flow_grpo", 0), "train", other, 0, "interrupted")
    args = ["compare", "--task", "geneval", "--algos", "flow_grpo", "--seeds", "1", "--out", str(out), "--dry-run", *TINY]
    dry = CliRunner().invoke(app, args)
    assert dry.exit_code == 0 and "new" in dry.output and "resume" not in dry.output
    dry = CliRunner().invoke(app, [*args, "--set", "model.revision=stage0"])
    assert dry.exit_code == 0 and "resume (interrupted)" in dry.output


def test_runs_made_with_the_old_random_streams_are_neither_matched_nor_resumed(tmp_path):
    from alignbench.reporting.rundir import new_run_dir, write_run_json
    from alignbench.training.trainer import RNG_STREAMS, resolve_run_config

    out = tmp_path / "runs"
    sets = [TINY[i + 1] for i, x in enumerate(TINY) if x == "--set"]
    cfg = resolve_run_config("flow_grpo", "geneval", "tiny-shapes", 0, overrides=sets, iterations=2)
    assert cfg["streams"] == RNG_STREAMS == 2
    old = {k: v for k, v in cfg.items() if k != "streams"}  # as written before the streams were versioned
    run_dir = new_run_dir(out, "geneval", "tiny-shapes", "flow_grpo", 0)
    write_run_json(run_dir, "train", old, 0, "interrupted")
    before = (run_dir / "run.json").read_text()

    r = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert r.exit_code == 2 and "random streams version 1" in r.output and "Traceback" not in r.output
    assert (run_dir / "run.json").read_text() == before  # the old run is left as it was

    dry = CliRunner().invoke(app, ["compare", "--task", "geneval", "--algos", "flow_grpo", "--seeds", "1",
                                   "--out", str(out), "--dry-run", *TINY])
    assert dry.exit_code == 0 and "new" in dry.output and "resume" not in dry.output

    write_run_json(run_dir, "train", cfg, 0, "interrupted")  # the same run with today's streams would resume
    dry = CliRunner().invoke(app, ["compare", "--task", "geneval", "--algos", "flow_grpo", "--seeds", "1",
                                   "--out", str(out), "--dry-run", *TINY])
    assert dry.exit_code == 0 and "resume (interrupted)" in dry.output
