"""`alignbench compare`: the matched protocol over algorithms × seeds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import UserError
from .common import (
    _set_threads,
    console,
    err_console,
    user_errors,
)
from .train import _process_state, _train


def _find_matching_run(out: Path, cfg: dict) -> tuple[Path, str] | None:
    """A run directory under ``out`` whose resolved config equals ``cfg`` (newest first), with its
    status; None if there is none."""
    from ..reporting.rundir import safe_name as safe

    want = json.loads(json.dumps(cfg))
    where = out / safe(cfg["task"]) / safe(cfg["model"]["name"]) / safe(cfg["algorithm"])
    for run_json in sorted(where.glob(f"seed{cfg['seed']}-*/run.json"), reverse=True):
        try:
            meta = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("kind") == "train" and meta.get("config") == want:
            return run_json.parent, meta.get("status", "unknown")
    return None


def _compare_action(out: Path, cfg: dict, found: tuple[Path, str] | None) -> str:
    """What ``compare`` will do with one planned run, as shown by its table (and ``--dry-run``)."""
    from ..reporting.rundir import config_lock_path, lock_holder, run_lock_path

    holder = lock_holder(config_lock_path(out, cfg)) or (lock_holder(run_lock_path(found[0])) if found else None)
    if holder:
        return f"running elsewhere ({holder})"
    if found is None:
        return "new"
    status = found[1]
    if status in ("finished", "failed"):
        return f"skip ({status})"
    return "resume (stopped while running)" if status == "running" else f"resume ({status})"


def _compare_one(out: Path, cfg: dict, device: str, label: str, report_to: str = "none") -> Path | None:
    """Make one planned run of ``compare`` exist and be finished: claim its configuration (so that a
    second ``compare`` on the same root leaves it alone), look again for a matching run directory,
    then skip it (finished), leave it out (failed), resume it or start it. Returns the finished run
    directory, or None for a failed run.

    Raises:
        RunBusyError: another process holds this configuration or its run directory."""
    from ..reporting.rundir import config_lock_path, exclusive_lock

    with exclusive_lock(config_lock_path(out, cfg), f"{cfg['algorithm']} seed {cfg['seed']} of this comparison"):
        found = _find_matching_run(out, cfg)  # again, under the claim: another compare may have made it meanwhile
        if found is not None and found[1] == "finished":
            return found[0]
        if found is not None and found[1] == "failed":
            err_console.print(f"warning: {found[0]} failed earlier (non-finite values); left out", markup=False)
            return None
        _, run_dir = _train(cfg, out, device, resume_dir=found[0] if found else None, label=label,
                            report_to=report_to)
        return run_dir


def _still_busy(out: Path, busy: list[dict], done_dirs: list[Path]) -> list[dict]:
    """Of the configs another process held when this ``compare`` reached them, those still not
    finished; the ones finished since are appended to ``done_dirs``, so that the compare that ends
    last sees every run finished and writes the leaderboard."""
    still = []
    for cfg in busy:
        found = _find_matching_run(out, cfg)
        if found is not None and found[1] == "finished":
            done_dirs.append(found[0])
        else:
            still.append(cfg)
    return still


def _runs_provenance(run_dirs: list[Path]) -> str:
    """When and from which code the runs were made: the span of their ``run.json`` start / last
    update times, and their alignbench git commits (short)."""
    starts, ends, commits = [], [], set()
    for d in run_dirs:
        try:
            meta = json.loads((d / "run.json").read_text())
        except (OSError, ValueError):
            continue
        starts.append(meta.get("started", ""))
        ends.append(meta.get("updated", ""))
        commits.add(str(meta.get("environment", {}).get("git_commit") or "unknown")[:7])
    starts, ends = [x for x in starts if x], [x for x in ends if x]
    if not starts or not ends:
        return "run times unknown"
    span = f"runs made {min(starts)[:16].replace('T', ' ')} – {max(ends)[:16].replace('T', ' ')} UTC"
    return f"{span}, alignbench commit(s) {', '.join(sorted(commits))}"


@user_errors
def compare_cmd(
    task: Annotated[str, typer.Option(help="task name (geneval, ocr) or task YAML")] = "geneval",
    algos: Annotated[str, typer.Option(help="comma-separated algorithms")] = "flow_grpo,mixgrpo,treegrpo,gardo,tmpo",
    seeds: Annotated[int, typer.Option(min=1, help="seeds 0 … N−1 per algorithm")] = 3,
    iterations: Annotated[int | None, typer.Option(min=1, help="training iterations (default: the model's protocol)")] = None,
    model: Annotated[str, typer.Option(help="registered model")] = "tiny-shapes",
    set_: Annotated[list[str] | None, typer.Option("--set", help="protocol.*, eval.* or model.* override shared by every run")] = None,
    out: Annotated[Path, typer.Option(help="root of run directories")] = Path("results/runs"),
    report: Annotated[Path | None, typer.Option(help="where the leaderboard and plots go (default: results/<task>)")] = None,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, …")] = "cpu",
    dry_run: Annotated[bool, typer.Option(help="only print which runs exist, resume or start")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's choice)")] = None,
    report_to: Annotated[str, typer.Option(help="experiment trackers for each run: none, tensorboard, wandb or all (extras alignbench[tensorboard], alignbench[wandb])")] = "none",
) -> None:
    """Run a matched comparison (specs/algorithms.md §6): one protocol for all algorithms, each with
    its own sampler, advantage, loss and hyperparameters; finished runs are skipped, interrupted ones
    resumed; then render the leaderboard and plots."""
    import datetime as _dt
    import platform

    from ..reporting import leaderboard as lb
    from ..reporting.plots import pareto_plots, training_curves
    from ..reporting.rundir import RunBusyError, git_commit
    from ..training.trainer import resolve_run_config

    git_commit()  # read once now: the runs record the code this process loaded, even hours later
    _set_threads(threads)
    from ..reporting.trackers import trackers_for

    trackers_for(report_to)
    if _process_state(device).num_processes > 1:
        raise UserError("compare: runs one process per run; start one compare per GPU instead (they share --out "
                        "safely), or train one run on several GPUs with accelerate launch … alignbench run")

    names = [a.strip() for a in algos.split(",") if a.strip()]
    if not names:
        raise UserError("--algos: give at least one algorithm")
    bad = [x for x in (set_ or []) if x.split("=", 1)[0].split(".", 1)[0] not in ("protocol", "eval", "model")]
    if bad:
        raise UserError(f"--set {bad[0]}: compare shares protocol.*, eval.* and model.* only; algorithms keep "
                        "their own hyperparameters (use alignbench run for algo.*)")
    plan = []
    for k in range(seeds):  # seed-major: an interrupted comparison leaves whole seeds, not whole algorithms
        for a in names:
            cfg = resolve_run_config(a, task, model, k, overrides=set_, iterations=iterations)
            plan.append((cfg, _find_matching_run(out, cfg)))
    table = Table(title=f"matched comparison: {task}, {model}, {seeds} seed(s)")
    for col in ("algorithm", "seed", "action", "run directory"):
        table.add_column(col)
    for cfg, found in plan:
        table.add_row(cfg["algorithm"], str(cfg["seed"]), _compare_action(out, cfg, found),
                      str(found[0]) if found else "—")
    console.print(table)
    if dry_run:
        return
    done_dirs, busy = [], []
    for n, (cfg, _) in enumerate(plan, 1):
        label = f"[{n}/{len(plan)}] {cfg['algorithm']} seed {cfg['seed']}"
        try:
            run_dir = _compare_one(out, cfg, device, label, report_to)
        except RunBusyError as exc:  # another compare (say, on another GPU) has this run: leave it to that one
            err_console.print(f"{label}: skipped, {exc.holder or 'another process'} is running it", markup=False)
            busy.append(cfg)
            continue
        except typer.Exit:
            err_console.print("compare interrupted; run the same command again to continue (finished runs are "
                              "kept, the interrupted one resumes)")
            raise
        if run_dir is not None:
            done_dirs.append(run_dir)
    busy = _still_busy(out, busy, done_dirs)
    if busy:
        err_console.print(f"{len(busy)} run(s) are still running in other processes; the leaderboard is written "
                          "by the compare that finishes last (or run this command again when they are done)")
        return
    found_runs = lb.collect_runs(out, task=None, model=None)
    for w in found_runs.warnings:
        if any(str(d) in w for d in done_dirs):
            err_console.print(f"warning: {w}", markup=False)
    keep = {d.resolve() for d in done_dirs}
    runs = [r for r in found_runs.runs if r.path.resolve() in keep]
    if not runs:
        raise UserError("no finished runs to render")
    frame = lb.build_leaderboard(runs)
    task_name = runs[0].task
    report = report or Path("results") / task_name
    report.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = ("alignbench compare --task " + task + f" --algos {','.join(names)} --seeds {seeds} --model {model}"
           + (f" --iterations {iterations}" if iterations else "") + "".join(f" --set {x}" for x in set_ or []))
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, device {device}"
    provenance = _runs_provenance([r.path for r in runs])
    header = (f"# {task_name}: matched comparison on {model}\n\n"
              f"Produced by `{cmd}` on {stamp} ({machine}); {provenance}; seeds 0–{seeds - 1}; every number is "
              "the mean over "
              "seeds with a 95% bootstrap interval (10,000 resamples, numpy seed 0); P(>base) is the probability "
              "that a seed's final value beats the base model's (Mann-Whitney U / pairs); images +/− counts the test "
              "images (same prompt and noise) whose primary metric got better / worse than the base model's, "
              "summed over seeds, with the exact two-sided sign test's p. Protocol: "
              f"{json.dumps(plan[0][0]['protocol'])}."
              "\n\n")
    from ..io import atomic_write_text

    atomic_write_text(report / "LEADERBOARD.md", header + lb.to_markdown(frame))
    atomic_write_text(report / "leaderboard.csv", lb.to_csv(frame))
    atomic_write_text(report / "leaderboard.json", lb.to_json(frame))
    title = f"{task_name} on {model}: mean over seeds, 95% bootstrap intervals"
    plots = pareto_plots(frame, report, title) + training_curves(runs, report, f"{task_name} on {model}")
    from ..reporting.rundir import publish_runs

    published = publish_runs([r.path for r in runs], report / "runs")
    console.print(lb.to_markdown(frame))
    console.print(f"wrote {report / 'LEADERBOARD.md'}, leaderboard.csv/.json, {len(plots)} plot files and the "
                  f"{len(published)} runs' files under {report / 'runs'} (alignbench leaderboard --task {task_name} "
                  f"--root {report / 'runs'} reproduces the table)")
