"""`alignbench run`: train one algorithm on one task."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import UserError
from .common import (
    _progress,
    _set_threads,
    _sigterm_as_interrupt,
    console,
    err_console,
    user_errors,
)
from .evaluate import _load_backbone


@user_errors
def run_cmd(
    algo: Annotated[str, typer.Option(help="algorithm: tmpo, flow_grpo, … (alignbench list algorithms) or pkg.module:Class")] = "tmpo",
    task: Annotated[str, typer.Option(help="task name (geneval, ocr), pkg.module:NAME or task YAML")] = "geneval",
    model: Annotated[str, typer.Option(help="registered model (tiny-shapes, flux-dev) or pkg.module:NAME")] = "tiny-shapes",
    iterations: Annotated[int | None, typer.Option(min=1, help="training iterations (default: the model's protocol preset)")] = None,
    seed: Annotated[int, typer.Option(help="seed of LoRA init, prompt choice and rollout noise")] = 0,
    config: Annotated[Path | None, typer.Option(help="YAML with sections algo, protocol, eval, model")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field, e.g. --set algo.lr=1e-3 --set protocol.group_size=9")] = None,
    out: Annotated[Path, typer.Option(help="root of run directories")] = Path("results/runs"),
    resume: Annotated[Path | None, typer.Option(help="continue the run in this directory from its last checkpoint")] = None,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, …")] = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's choice)")] = None,
    report_to: Annotated[str, typer.Option(help="experiment trackers: none, tensorboard, wandb or all (extras alignbench[tensorboard], alignbench[wandb]); files under <run>/trackers/")] = "none",
) -> None:
    """Train one algorithm on one task: evaluate the base model, train, evaluate the EMA model."""

    from ..training.trainer import RNG_STREAMS, resolve_run_config

    _set_threads(threads)
    from ..reporting.trackers import trackers_for

    trackers_for(report_to)  # a bad value or a missing package fails before anything is loaded

    if resume is not None:
        if set_ or config is not None or iterations is not None:
            raise UserError("--resume: takes the configuration from the run directory; drop --set, --config and --iterations")
        run_json = resume / "run.json"
        if not run_json.is_file():
            raise UserError(f"--resume: '{resume}' is not a run directory (no run.json)")
        meta = json.loads(run_json.read_text())
        if meta.get("kind") != "train":
            raise UserError(f"--resume: '{resume}' is not a training run (kind '{meta.get('kind')}')")
        cfg, run_dir = meta["config"], resume
        if meta.get("status") != "finished" and cfg.get("streams", 1) != RNG_STREAMS:
            raise UserError(f"--resume: '{resume}' was made with the trainer's random streams version "
                            f"{cfg.get('streams', 1)} and this alignbench draws version {RNG_STREAMS}; it cannot "
                            "be continued exactly, start a new run")
        if meta.get("status") == "finished":
            console.print(f"{run_dir} is already finished")
            _print_run_summary(cfg, meta["summary"], run_dir)
            return
    else:
        cfg = resolve_run_config(algo, task, model, seed, config_file=config, overrides=set_, iterations=iterations)
    summary, run_dir = _train(cfg, out, device, resume_dir=resume, report_to=report_to)
    if _process_state(device).is_main_process:
        _print_run_summary(cfg, summary, run_dir)


def _train(cfg: dict, out: Path, device: str, resume_dir: Path | None = None,
           label: str | None = None, report_to: str = "none") -> tuple[dict, Path]:
    """Train one resolved run config into a new run directory under ``out`` (or continue the one in
    ``resume_dir``); returns (summary, run directory). Ctrl-C leaves status ``interrupted`` and exits 130."""
    from ..models.spec import ModelSpec
    from ..reporting.rundir import exclusive_lock, new_run_dir, run_lock_path

    state = _process_state(device)
    main = state.is_main_process
    if state.num_processes > 1 and device != "cpu":
        device = str(state.device)  # under accelerate launch / torchrun: this process's own GPU
    if resume_dir is not None and main:  # refuse before loading anything if another process trains into it
        with exclusive_lock(run_lock_path(resume_dir), f"run directory {resume_dir}"):
            pass
    spec = ModelSpec.model_validate(cfg["model"])
    backbone = _load_backbone(spec, device)
    run_dir = resume_dir
    if run_dir is None:  # the main process names the new directory; the others take its name
        made = new_run_dir(out, cfg["task"], spec.name, cfg["algorithm"], cfg["seed"]) if main else None
        run_dir = Path(_broadcast(str(made) if made else None, state))
    lock = exclusive_lock(run_lock_path(run_dir), f"run directory {run_dir}") if main else contextlib.nullcontext()
    with lock:
        return _train_locked(cfg, run_dir, backbone, fresh=resume_dir is None, label=label, main=main,
                             report_to=report_to)


def _process_state(device: str):
    """accelerate's ``PartialState`` of this process: one process, unless started by ``accelerate
    launch`` or ``torchrun`` (then ``num_processes`` > 1 and only ``is_main_process`` writes)."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def _broadcast(value: str | None, state) -> str:
    """The main process's ``value`` on every process (itself when there is one process)."""
    if state.num_processes == 1:
        return value  # type: ignore[return-value]
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def base_cache_dir(run_dir: Path) -> Path:
    """``<run root>/.base_eval``: run directories are ``<root>/<task>/<model>/<algo>/<seed-time>``."""
    return run_dir.parents[3] / ".base_eval"


def _train_locked(cfg: dict, run_dir: Path, backbone, fresh: bool, label: str | None,
                  main: bool = True, report_to: str = "none") -> tuple[dict, Path]:
    """The body of :func:`_train`, run while this process holds the run directory's lock; only the
    main process (``main``) writes ``run.json`` and shows progress."""
    from ..reporting.rundir import write_run_json as _write_run_json
    from ..training.trainer import NonFiniteError, Trainer, task_for_run

    def write_run_json(*args, **kwargs) -> None:
        if main:
            _write_run_json(*args, **kwargs)

    t = task_for_run(cfg, backbone.device)
    name = label or f"{cfg['algorithm']} {t.name}"
    write_run_json(run_dir, "train", cfg, cfg["seed"], "running")
    with _progress(disable=not main) as bar:
        jobs: dict[str, int] = {}

        def report(event: str, info) -> None:
            if event == "eval":
                stage, done, total = info
                if stage not in jobs:
                    jobs[stage] = bar.add_task(stage, total=total)
                bar.update(jobs[stage], completed=done)
            elif event == "start":
                done, total = info
                jobs["train"] = bar.add_task(name, total=total, completed=done, per_step=True)
            elif event == "iteration":
                bar.update(jobs["train"], completed=info["iteration"] + 1,
                           description=f"{name} reward {info['reward_mean']:.3f} ± {info['reward_std']:.3f}, "
                                       f"kl {info['kl']:.4f}, clip {info['clip_frac']:.2f}, NFE {info['nfe']}, "
                                       f"{info['seconds']['total']:.1f} s/it")

        try:
            trainer = Trainer(run_dir, cfg, backbone, t, progress=report, report_to=report_to,
                              base_cache=base_cache_dir(run_dir))
        except UserError:
            if fresh and main:  # nothing was trained: leave no half-made run directory behind
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        try:
            with _sigterm_as_interrupt():
                summary = trainer.run()
        except KeyboardInterrupt:
            write_run_json(run_dir, "train", cfg, cfg["seed"], "interrupted")
            if main:
                err_console.print(f"interrupted after {trainer.start_iteration_done} checkpointed iteration(s); "
                                  f"continue with: alignbench run --resume {run_dir}")
            raise typer.Exit(130) from None
        except NonFiniteError:
            write_run_json(run_dir, "train", cfg, cfg["seed"], "failed")
            raise
    write_run_json(run_dir, "train", cfg, cfg["seed"], "finished", {"summary": summary})
    return summary, run_dir


def _print_run_summary(cfg: dict, summary: dict, run_dir: Path) -> None:
    base, final = summary["base"], summary["final"]
    table = Table(title=f"{cfg['algorithm']} on {cfg['task']} ({cfg['model']['name']}, seed {cfg['seed']}, "
                        f"{cfg['protocol']['iterations']} iterations): test split, base → final (EMA)")
    table.add_column("metric")
    for col in ("base", "final", "change"):
        table.add_column(col, justify="right")
    rows = [(k, base["metrics"]["overall"][k], final["metrics"]["overall"][k])
            for k in base["metrics"]["overall"] if k != "n"]
    rows.append(("lgmd", base["lgmd"], final["lgmd"]))
    for key in ("cosine_diversity", "vendi"):
        if key in base and key in final:
            rows.append((key, base[key], final[key]))
    for k, b, f in rows:
        table.add_row(k, f"{b:.3f}", f"{f:.3f}", f"{f - b:+.3f}")
    console.print(table)
    sec, cost = summary["seconds"], summary["cost"]
    console.print(f"time: rollout {sec['rollout']:.0f} s, reward {sec['reward']:.0f} s, update {sec['update']:.0f} s, "
                  f"eval {sec['eval_base'] + sec['eval_final']:.0f} s; per iteration {cost['seconds_per_iteration']:.1f} s, "
                  f"{cost['nfe_per_iteration']:.0f} NFE, {cost['trained_edges_per_iteration']:.0f} trained edges")
    console.print(f"wrote {run_dir}")
