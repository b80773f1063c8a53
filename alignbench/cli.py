"""The ``alignbench`` command line (Typer + rich). A thin layer: each command parses its options,
calls library code, and prints. Bad input ends in one line on stderr and exit status 2."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="alignbench: online RL alignment of flow-matching text-to-image models, benchmarked.")
world_app = typer.Typer(no_args_is_help=True, help="The embedded ShapesWorld: sample sheets and prompt splits.")
app.add_typer(world_app, name="world")

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def user_errors(fn):
    """Turn :class:`UserError` into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"error: {exc}", markup=False)
            raise typer.Exit(2) from None

    return wrapper


def _set_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op CPU threads for this process (None: torch's default, the
    number of cores); recorded in each run's ``run.json`` as ``environment.torch_threads``."""
    if threads:
        import torch

        torch.set_num_threads(threads)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Inside the block, SIGTERM (``kill``, a job scheduler, a closing session) stops a training run
    the way Ctrl-C does: the run is marked interrupted and resumes from its last checkpoint."""
    import signal

    def _raise(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _signals_request_stop(request_stop):
    """Inside the block, SIGINT and SIGTERM call ``request_stop`` (a clean stop with a checkpoint
    after the step in progress) instead of killing the process; a second signal stops at once."""
    import signal

    def _handler(signum, frame):
        request_stop()
        for sig, h in old.items():  # a second Ctrl-C / kill acts as usual
            signal.signal(sig, h)

    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                old[sig] = signal.signal(sig, _handler)
    except ValueError:  # not the main thread
        old = {}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


class PlainProgress:
    """The part of rich's :class:`~rich.progress.Progress` API the commands use, printing plain lines
    instead of a bar, for output that is not a terminal (a log file, ``nohup``, a job scheduler).

    A task created with ``add_task(..., per_step=True)`` (training iterations) prints one line each
    time its count changes; other tasks print when they start, at most every ``every_s`` seconds
    while they run, and when they complete. A line carries the task's description (with the same
    figures as the bar), ``done/total`` and the elapsed seconds.
    """

    def __init__(self, console: Console, every_s: float = 30.0, disable: bool = False):
        import time

        self.console, self.every_s, self.disable = console, every_s, disable
        self._clock = time.monotonic
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 per_step: bool = False, **fields) -> int:
        tid = len(self.tasks)
        now = self._clock()
        self.tasks[tid] = {"description": description, "total": total, "completed": completed,
                           "per_step": per_step, "start": now, "last": None}
        self._line(tid, now)
        return tid

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, completed=self.tasks[task_id]["completed"] + advance)

    def update(self, task_id: int, completed: float | None = None, description: str | None = None,
               total: float | None = None, **fields) -> None:
        t = self.tasks[task_id]
        changed = completed is not None and completed != t["completed"]
        if completed is not None:
            t["completed"] = completed
        if description is not None:
            t["description"] = description
        if total is not None:
            t["total"] = total
        now = self._clock()
        done = t["total"] is not None and t["completed"] >= t["total"]
        if (t["per_step"] and changed) or (changed and done) or now - t["last"] >= self.every_s:
            self._line(task_id, now)

    def _line(self, task_id: int, now: float) -> None:
        t = self.tasks[task_id]
        t["last"] = now
        if self.disable:
            return
        total = "?" if t["total"] is None else f"{t['total']:g}"
        self.console.print(f"{t['description']}: {t['completed']:g}/{total} ({now - t['start']:.0f} s)",
                           markup=False, highlight=False)


def _progress(disable: bool = False) -> Progress | PlainProgress:
    """A rich progress bar on stderr when stdout is a terminal; otherwise :class:`PlainProgress`
    printing plain lines on stdout (one per training iteration, every 30 s for other loops)."""
    import sys

    if not sys.stdout.isatty():
        return PlainProgress(console, disable=disable)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True, disable=disable)


def _world_config(config: Path | None, overrides: list[str] | None):
    from .config import resolve
    from .world.scene import WorldConfig

    return resolve(WorldConfig, config_file=config, overrides=overrides or [])


def _summary_table(title: str, summary: dict[str, dict[str, float]], keys: tuple[str, ...]) -> Table:
    table = Table(title=title)
    table.add_column("tag")
    table.add_column("n", justify="right")
    for k in keys:
        table.add_column(k, justify="right")
    for tag, row in summary.items():
        style = "bold" if tag == "overall" else None
        table.add_row(tag, str(int(row["n"])), *(f"{row[k]:.3f}" for k in keys), style=style)
    return table


# ---------------------------------------------------------------------------------------------
@app.command("list")
@user_errors
def list_cmd(kind: Annotated[str, typer.Argument(help="algorithms, tasks, models or rewards")]) -> None:
    """List the registered algorithms, tasks, models or rewards."""
    from .registry import registry_for

    reg = registry_for(kind)
    names = reg.names()
    if not names:
        console.print(f"no {reg.kind}s registered (plugins register through the '{reg.group}' entry-point group)")
        return
    table = Table(title=f"{reg.kind}s")
    table.add_column("name")
    table.add_column("description")
    if reg.kind == "task":
        table.add_column("domains")
    if reg.kind == "algorithm":
        table.add_column("paper")
        table.add_column("group size (paper)", justify="right")
    for name in names:
        obj = reg.get(name)
        row = [name, reg.describe(name)]
        if reg.kind == "task":
            row.append(", ".join(obj.spec.domains))
        if reg.kind == "algorithm":
            row += [getattr(obj, "paper", "") or "—", str(getattr(obj, "group_size", None) or "—")]
        table.add_row(*row)
    console.print(table)


@app.command("show")
@user_errors
def show_cmd(kind: Annotated[str, typer.Argument(help="algorithm, task, model or reward")],
             name: Annotated[str, typer.Argument(help="registered name or pkg.module:Name")]) -> None:
    """Show one registered entry in detail."""
    from .registry import registry_for
    from .task import get_task

    reg = registry_for(kind)
    obj = get_task(name) if reg.kind == "task" else reg.get(name)
    console.print(f"[bold]{reg.kind} {name}[/bold]: {getattr(obj, 'description', '') or reg.describe(name)}")
    if reg.kind == "task":
        for domain, spec in obj.spec.domains.items():
            n_train, n_test = (len(obj.prompts(s, domain)) for s in ("train", "test"))
            console.print(f"  domain {domain}: reward {spec.reward} (trains on '{spec.train_reward}'), "
                          f"metrics {', '.join(spec.metrics)}; prompts train {n_train}, test {n_test}")
    elif reg.kind == "model" and hasattr(obj, "resolved_source"):
        for field, value in obj.model_dump().items():
            if field not in ("name", "description"):
                console.print(f"  {field}: {value}", markup=False)
        console.print(f"  resolved source: {obj.resolved_source()}", markup=False)
    elif reg.kind == "algorithm" and hasattr(obj, "Config"):
        console.print(f"  paper: {obj.paper}", markup=False)
        table = Table(title=f"{name} config (paper defaults; presets: {', '.join(obj.presets) or 'none'})")
        for col in ("field", "default", "source / meaning"):
            table.add_column(col)
        for field, info in obj.Config.model_fields.items():
            table.add_row(field, repr(info.default), info.description or "")
        console.print(table)
        for preset, values in obj.presets.items():
            console.print(f"  preset {preset}: {values}", markup=False)
    elif getattr(obj, "__doc__", None):
        console.print(obj.__doc__.strip(), markup=False)


# ---------------------------------------------------------------------------------------------
@world_app.command("sample")
@user_errors
def world_sample(
    task: Annotated[str, typer.Option(help="task name (geneval, ocr), pkg.module:NAME or task YAML")] = "geneval",
    n: Annotated[int, typer.Option(min=1, max=1024, help="number of scenes")] = 16,
    out: Annotated[Path, typer.Option(help="contact sheet PNG to write")] = Path("sheet.png"),
    split: Annotated[str, typer.Option(help="prompt split: train or test")] = "test",
    seed: Annotated[int, typer.Option(help="seed of prompt choice and scene layout")] = 0,
    cols: Annotated[int, typer.Option(min=1, max=16, help="tiles per row")] = 4,
    save_dir: Annotated[Path | None, typer.Option(help="also write DIR/images/00000.png … and DIR/metadata.jsonl (input for `alignbench score`)")] = None,
    config: Annotated[Path | None, typer.Option(help="world config YAML (WorldConfig fields)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a world config field, e.g. --set size_min=12")] = None,
) -> None:
    """Render scenes that satisfy a task's prompts, run the task's scorer on them, and draw a
    contact sheet with the prompts and the detector's boxes (geneval) or OCR readings (ocr)."""
    from .io import write_jsonl
    from .reporting.sheet import contact_sheet, save_png, tile_for
    from .scoring import summarize_rows
    from .task import get_task
    from .world.sample import render_records, sample_records

    cfg = _world_config(config, set_)
    t = get_task(task)
    records = sample_records(t.prompts(split), n, seed)
    reward = t.reward("shapes")
    images, details = [], []
    with _progress() as bar:
        job = bar.add_task(f"render + score {t.name}", total=n)
        for i, rec in enumerate(records):
            img = render_records([rec], t.spec.format, seed * 1_000_003 + i, cfg)[0]
            images.append(img)
            details.append(reward.details([img], [rec["prompt"]], [rec])[0])
            bar.advance(job)
    tiles = [tile_for(t.spec.format, img, rec, det) for img, rec, det in zip(images, records, details, strict=True)]
    save_png(contact_sheet(tiles, cols=cols), out)
    if save_dir is not None:
        from PIL import Image

        (save_dir / "images").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(save_dir / "images" / f"{i:05d}.png")
        write_jsonl(save_dir / "metadata.jsonl", records)
    rows = [{"tag": rec.get("tag", ""), **{k: det[k] for k in reward.keys}} for rec, det in zip(records, details, strict=True)]
    console.print(_summary_table(f"{t.name}: {n} rendered scenes scored by their own scorer",
                                 summarize_rows(rows, reward.keys), reward.keys))
    console.print(f"wrote {out}" + (f", {save_dir}/images/ ({n} images) and {save_dir}/metadata.jsonl" if save_dir else ""))


@world_app.command("splits")
@user_errors
def world_splits(
    out: Annotated[Path, typer.Option(help="directory for the four JSON-lines files")] = Path("tasks/data"),
    check: Annotated[bool, typer.Option(help="compare with the shipped files instead of writing; exit 1 on a difference")] = False,
    seed: Annotated[int, typer.Option(help="split seed (43 = shipped, GenEval's default)")] = 43,
) -> None:
    """Regenerate the fixed-seed train/test prompt splits of geneval and ocr (byte-identical)."""
    import tempfile
    from importlib import resources

    from .world.prompts import write_splits

    if not check:
        for name, path in write_splits(out, seed).items():
            console.print(f"wrote {path} ({sum(1 for _ in open(path))} prompts)  [{name}]")
        return
    shipped = resources.files("alignbench.tasks") / "data"
    with tempfile.TemporaryDirectory() as tmp:
        diffs = [name for name, path in write_splits(tmp, seed).items()
                 if path.read_bytes() != (shipped / path.name).read_bytes()]
    if diffs:
        err_console.print(f"differ from the shipped splits: {', '.join(diffs)}")
        raise typer.Exit(1)
    console.print("regenerated splits are byte-identical to the shipped ones")


@world_app.command("validate")
@user_errors
def world_validate(
    task: Annotated[str, typer.Option(help="geneval (measure the detector) or ocr (measure EasyOCR)")] = "geneval",
    n: Annotated[int, typer.Option(min=1, help="number of freshly rendered scenes")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the scenes (the tests use seeds below 1000)")] = 20261122,
    blur: Annotated[float, typer.Option(min=0, help="geneval only: Gaussian blur σ in pixels applied to each "
                                        "scene first (robustness to soft, decoded edges)")] = 0.0,
) -> None:
    """Measure the world's scorer on freshly rendered scenes: detector found rate and confusion
    counts (geneval), or EasyOCR exact-read rate and CPU time per image (ocr)."""
    import os

    from .world.validate import confusion_rows, validate_detector, validate_ocr

    if task not in ("geneval", "ocr"):
        raise UserError(f"--task '{task}' is not measurable here; allowed: geneval, ocr")
    with _progress() as bar:
        job = bar.add_task(f"validating {task} scorer", total=n)
        step = lambda: bar.advance(job)  # noqa: E731
        rep = (validate_detector(n, seed, progress=step, blur=blur) if task == "geneval"
               else validate_ocr(n, seed, progress=step))
    threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count())
    if task == "geneval":
        from .world.palette import CLASSES

        blurred = f", blur σ {blur:g} px" if blur else ""
        table = Table(title=f"detector confusion over {rep.scenes} scenes (drawn × detected), seed {seed}{blurred}")
        table.add_column("drawn")
        for c in list(CLASSES) + ["missed"]:
            table.add_column(c, justify="right")
        for row in confusion_rows(rep):
            table.add_row(*row)
        console.print(table)
        console.print(f"objects {rep.objects}: found with right class, colour and score > 0.9: {rep.found} "
                      f"({100 * rep.found_rate:.2f}%); wrong colour {rep.wrong_color}; score <= 0.9 {rep.low_score}; "
                      f"spurious detections {rep.spurious}; detector {1000 * rep.seconds / rep.scenes:.2f} ms/scene "
                      f"({threads} CPU threads)")
    else:
        console.print(f"signs {rep.signs}: read exactly {rep.exact} ({100 * rep.exact / rep.signs:.2f}%), "
                      f"mean OCR reward {rep.reward_sum / rep.signs:.4f}, EasyOCR {rep.seconds / rep.signs:.3f} s/image "
                      f"on CPU ({threads} threads), seed {seed}")
        for target, reading in rep.errors[:20]:
            console.print(f"  misread {target!r} as {reading!r}", markup=False)


# ---------------------------------------------------------------------------------------------
@app.command("score")
@user_errors
def score_cmd(
    task: Annotated[str, typer.Option(help="task name (geneval, ocr), pkg.module:NAME or task YAML")],
    images: Annotated[Path, typer.Option(help="folder of images named by metadata index: 00000.png, 00000_1.png, …")],
    metadata: Annotated[Path, typer.Option(help="JSON-lines prompt metadata (the task's format)")],
    out: Annotated[Path, typer.Option(help="per-image JSON lines to write")] = Path("scores.jsonl"),
) -> None:
    """Score a folder of images against prompt metadata; print a per-tag table and write one JSON
    line per image."""
    from .io import write_jsonl
    from .scoring import scan_folder, score_folder, summarize_rows
    from .task import get_task, load_metadata

    t = get_task(task)
    reward = t.reward("shapes")
    records = load_metadata(metadata, reward)
    total = len(scan_folder(images, len(records)).matched)
    with _progress() as bar:
        job = bar.add_task(f"scoring with {t.domain('shapes').reward}", total=total)
        rows, skipped = score_folder(images, records, reward, progress=lambda k: bar.advance(job, k))
    for name, reason in skipped:
        err_console.print(f"skipped {name}: {reason}", markup=False)
    if not rows:
        raise UserError(f"no images in '{images}' could be scored ({len(skipped)} skipped)")
    write_jsonl(out, rows)
    console.print(_summary_table(f"{t.name}: {len(rows)} images", summarize_rows(rows, reward.keys), reward.keys))
    console.print(f"wrote {len(rows)} rows to {out}" + (f"; skipped {len(skipped)} file(s)" if skipped else ""))


@app.command("pretrain")
@user_errors
def pretrain_cmd(
    out: Annotated[Path, typer.Option(help="output directory: checkpoint.pt, log.jsonl, pipeline/ (save_pretrained), pretrain.json; an existing checkpoint there is resumed")] = Path("results/runs/pretrain/tiny-shapes"),
    seed: Annotated[int | None, typer.Option(help="seed of initialisation, data and noise (default 0)")] = None,
    vae_steps: Annotated[int | None, typer.Option(min=0, help="VAE optimizer steps")] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="transformer + text-encoder optimizer steps")] = None,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, …")] = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's choice)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML of PretrainConfig fields (model sizes, batch, lr, pool_size, …)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field, e.g. --set batch=32 or --set model.num_layers=3")] = None,
    export: Annotated[Path | None, typer.Option(help="do not train: write the checkpoint in --out as a save_pretrained pipeline in this directory")] = None,
    max_minutes: Annotated[float | None, typer.Option(min=0, help="stop cleanly with a checkpoint after this many minutes of this invocation; run again to resume")] = None,
    plot: Annotated[Path | None, typer.Option(help="do not train: draw the dev-probe learning curves of --out (and of every --with) into this PNG (+ SVG)")] = None,
    with_: Annotated[list[Path] | None, typer.Option("--with", help="with --plot: another pretraining directory to draw beside --out (repeatable)")] = None,
) -> None:
    """Pretrain the embedded backbone on ShapesWorld: VAE, then transformer + text encoders.

    With --set probe.every=N the dev probe (train-split prompts, EMA weights) is scored every N
    images seen and appended to probe.jsonl; --plot draws those learning curves."""
    import time

    import torch

    from .config import resolve
    from .models.pretrain import PretrainConfig, Pretrainer

    if plot is not None:
        from .models.probe import plot_curves

        dirs = [out, *(with_ or [])]
        tags = plot_curves(dirs, plot)
        console.print(f"wrote {plot} ({len(dirs)} runs; panels: {', '.join(tags)})")
        return

    cli = [f"{k}={v}" for k, v in {"seed": seed, "vae_steps": vae_steps, "steps": steps}.items() if v is not None]
    cfg = resolve(PretrainConfig, config_file=config, overrides=cli + (set_ or []))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device: '{device}' requested but CUDA is not available here; allowed: cpu")
    _set_threads(threads)
    if export is not None:
        where = Pretrainer(cfg, out, device="cpu").export(export)
        console.print(f"exported {out / 'checkpoint.pt'} ({where['phase']} phase, step {where['step']}"
                      f"{', EMA weights' if where['ema'] else ''}) to {export}")
        return
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def report(phase: str, step: int, total: int, row: dict) -> None:
            if phase == "probe":
                pr = row["probe"]
                parts = [f"{t} {v['accuracy']:.2f}" for t, v in pr.items() if isinstance(v, dict) and "accuracy" in v]
                if "ocr" in pr:
                    parts.append(f"ocr {pr['ocr']['ocr']:.2f}")
                bar.console.print(f"probe at {step * cfg.batch:,} images: " + ", ".join(parts))
                return
            label = {"vae": "VAE", "encode": "encode pool", "flow": "transformer"}[phase]
            if phase not in tasks:
                tasks[phase] = bar.add_task(label, total=total, completed=step)
            loss = f" loss {row['loss']:.4f}" if "loss" in row else ""
            bar.update(tasks[phase], completed=step, description=f"{label}{loss}")

        t0 = time.perf_counter()
        trainer = Pretrainer(cfg, out, device=device, progress=report,
                             max_seconds=None if max_minutes is None else 60 * max_minutes)
        with _signals_request_stop(trainer.request_stop):
            summary = trainer.run()
    if summary.get("stopped"):
        why = "on a signal" if trainer.stop_requested else f"after {max_minutes:g} min"
        console.print(f"stopped {why} at {summary['phase']} step {summary['step']} with a "
                      f"checkpoint in {out}; run the same command again to resume")
        return
    tp = summary["throughput_images_per_s"]
    console.print(f"done in {time.perf_counter() - t0:.0f} s (this invocation); VAE {tp['vae'] or 0:.1f} img/s, "
                  f"transformer {tp['flow'] or 0:.1f} img/s; pipeline saved to {out / 'pipeline'}")


@app.command("eval")
@user_errors
def eval_cmd(
    task: Annotated[str, typer.Option(help="task name (geneval, ocr), pkg.module:NAME or task YAML")] = "geneval",
    model: Annotated[str, typer.Option(help="registered model (tiny-shapes, flux-dev) or pkg.module:NAME")] = "tiny-shapes",
    images_per_prompt: Annotated[int, typer.Option(min=2, help="K images per prompt")] = 4,
    steps: Annotated[int | None, typer.Option(min=1, help="ODE steps (default: the model's eval_steps)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the per-image initial noises (same noises for every model)")] = 0,
    split: Annotated[str, typer.Option(help="prompt split: test or train")] = "test",
    max_prompts: Annotated[int | None, typer.Option(min=1, help="first N prompts only")] = None,
    out: Annotated[Path, typer.Option(help="root of run directories")] = Path("results/runs"),
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, …")] = "cpu",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a model field, e.g. --set model.source=/path/to/FLUX.1-dev")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's choice)")] = None,
) -> None:
    """Evaluate a model (no training) with the evaluation protocol; writes a run directory."""
    _set_threads(threads)
    from .config import apply_overrides
    from .evaluation import EvalConfig, evaluate, write_eval
    from .models.spec import get_model
    from .reporting.rundir import new_run_dir, write_run_json
    from .task import get_task

    overrides = apply_overrides({}, set_ or [])
    unknown = sorted(set(overrides) - {"model"})
    if unknown:
        raise UserError(f"--set {unknown[0]}: unknown section; allowed: model")
    if split not in ("train", "test"):
        raise UserError(f"--split: '{split}' is not allowed; allowed: test, train")
    spec = get_model(model, **overrides.get("model", {}))
    t = get_task(task)
    t.domain(spec.domain)
    cfg = EvalConfig(split=split, images_per_prompt=images_per_prompt, steps=steps, seed=seed, max_prompts=max_prompts)
    backbone = _load_backbone(spec, device)
    run_dir = new_run_dir(out, t.name, spec.name, "base", seed)
    config = {"task": t.name, "model": spec.model_dump(), "eval": cfg.model_dump()}
    write_run_json(run_dir, "eval", config, seed, "running")
    with _progress() as bar:
        jobs: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in jobs:
                jobs[stage] = bar.add_task(f"{stage} {t.name}", total=total)
            bar.update(jobs[stage], completed=done)

        result = evaluate(backbone, t, cfg, spec.eval_steps, progress=report)
    grid = write_eval(run_dir, result, t.spec.format, grid_prompts=cfg.grid_prompts)
    write_run_json(run_dir, "eval", config, seed, "finished")
    _print_eval(t, result.summary)
    console.print(f"wrote {run_dir} (eval.json, eval.jsonl, {grid.relative_to(run_dir)})")


def _load_backbone(spec, device: str):
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device: '{device}' requested but CUDA is not available here; allowed: cpu")
    return spec.load(device)


def _print_eval(t, summary: dict) -> None:
    metrics = summary["metrics"]
    keys = tuple(k for k in next(iter(metrics.values())) if k != "n")
    console.print(_summary_table(f"{t.name}: {summary['n_prompts']} prompts × {summary['images_per_prompt']} images, "
                                 f"{summary['steps']} ODE steps", metrics, keys))
    console.print(f"LGMD {summary['lgmd']:.3f}   cosine diversity {summary['cosine_diversity']:.3f}   "
                  f"Vendi {summary['vendi']:.2f}   (sampling {summary['seconds']['sample']:.1f} s, "
                  f"scoring {summary['seconds']['score']:.1f} s)")


@app.command("run")
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
) -> None:
    """Train one algorithm on one task: evaluate the base model, train, evaluate the EMA model."""
    import json

    from .training.trainer import RNG_STREAMS, resolve_run_config

    _set_threads(threads)

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
    summary, run_dir = _train(cfg, out, device, resume_dir=resume)
    if _process_state(device).is_main_process:
        _print_run_summary(cfg, summary, run_dir)


def _train(cfg: dict, out: Path, device: str, resume_dir: Path | None = None,
           label: str | None = None) -> tuple[dict, Path]:
    """Train one resolved run config into a new run directory under ``out`` (or continue the one in
    ``resume_dir``); returns (summary, run directory). Ctrl-C leaves status ``interrupted`` and exits 130."""
    from .models.spec import ModelSpec
    from .reporting.rundir import exclusive_lock, new_run_dir, run_lock_path

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
        return _train_locked(cfg, run_dir, backbone, fresh=resume_dir is None, label=label, main=main)


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


def _train_locked(cfg: dict, run_dir: Path, backbone, fresh: bool, label: str | None,
                  main: bool = True) -> tuple[dict, Path]:
    """The body of :func:`_train`, run while this process holds the run directory's lock; only the
    main process (``main``) writes ``run.json`` and shows progress."""
    from .reporting.rundir import write_run_json as _write_run_json
    from .task import get_task
    from .training.trainer import NonFiniteError, Trainer

    def write_run_json(*args, **kwargs) -> None:
        if main:
            _write_run_json(*args, **kwargs)

    t = get_task(cfg.get("task_source", cfg["task"]))
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
            trainer = Trainer(run_dir, cfg, backbone, t, progress=report)
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


def _find_matching_run(out: Path, cfg: dict) -> tuple[Path, str] | None:
    """A run directory under ``out`` whose resolved config equals ``cfg`` (newest first), with its
    status; None if there is none."""
    from .reporting.rundir import safe_name as safe

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
    from .reporting.rundir import config_lock_path, lock_holder, run_lock_path

    holder = lock_holder(config_lock_path(out, cfg)) or (lock_holder(run_lock_path(found[0])) if found else None)
    if holder:
        return f"running elsewhere ({holder})"
    if found is None:
        return "new"
    status = found[1]
    if status in ("finished", "failed"):
        return f"skip ({status})"
    return "resume (stopped while running)" if status == "running" else f"resume ({status})"


def _compare_one(out: Path, cfg: dict, device: str, label: str) -> Path | None:
    """Make one planned run of ``compare`` exist and be finished: claim its configuration (so that a
    second ``compare`` on the same root leaves it alone), look again for a matching run directory,
    then skip it (finished), leave it out (failed), resume it or start it. Returns the finished run
    directory, or None for a failed run.

    Raises:
        RunBusyError: another process holds this configuration or its run directory."""
    from .reporting.rundir import config_lock_path, exclusive_lock

    with exclusive_lock(config_lock_path(out, cfg), f"{cfg['algorithm']} seed {cfg['seed']} of this comparison"):
        found = _find_matching_run(out, cfg)  # again, under the claim: another compare may have made it meanwhile
        if found is not None and found[1] == "finished":
            return found[0]
        if found is not None and found[1] == "failed":
            err_console.print(f"warning: {found[0]} failed earlier (non-finite values); left out", markup=False)
            return None
        _, run_dir = _train(cfg, out, device, resume_dir=found[0] if found else None, label=label)
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


@app.command("compare")
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
) -> None:
    """Run a matched comparison (specs/algorithms.md §6): one protocol for all algorithms, each with
    its own sampler, advantage, loss and hyperparameters; finished runs are skipped, interrupted ones
    resumed; then render the leaderboard and plots."""
    import datetime as _dt
    import platform

    from .reporting import leaderboard as lb
    from .reporting.plots import pareto_plots, training_curves
    from .reporting.rundir import RunBusyError, git_commit
    from .training.trainer import resolve_run_config

    git_commit()  # read once now: the runs record the code this process loaded, even hours later
    _set_threads(threads)
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
            run_dir = _compare_one(out, cfg, device, label)
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
    from .io import atomic_write_text

    atomic_write_text(report / "LEADERBOARD.md", header + lb.to_markdown(frame))
    atomic_write_text(report / "leaderboard.csv", lb.to_csv(frame))
    atomic_write_text(report / "leaderboard.json", lb.to_json(frame))
    title = f"{task_name} on {model}: mean over seeds, 95% bootstrap intervals"
    plots = pareto_plots(frame, report, title) + training_curves(runs, report, f"{task_name} on {model}")
    console.print(lb.to_markdown(frame))
    console.print(f"wrote {report / 'LEADERBOARD.md'}, leaderboard.csv/.json and {len(plots)} plot files")


@app.command("leaderboard")
@user_errors
def leaderboard_cmd(
    task: Annotated[str, typer.Option(help="task whose runs are ranked (geneval, ocr, ...)")] = "geneval",
    model: Annotated[str | None, typer.Option(help="only runs of this model")] = None,
    root: Annotated[Path, typer.Option(help="root of the run directories")] = Path("results/runs"),
    fmt: Annotated[str, typer.Option("--format", help="table, markdown, csv or json")] = "table",
    baseline: Annotated[str, typer.Option(help="'base' (the base model) or an algorithm name")] = "base",
    primary: Annotated[str | None, typer.Option(help="metric for ranking and P(improvement); default: the task's first")] = None,
    out: Annotated[Path | None, typer.Option(help="write to this file instead of the terminal")] = None,
    plots: Annotated[Path | None, typer.Option(help="also draw the Pareto plots and training curves (PNG + SVG) into this folder")] = None,
) -> None:
    """Rank the finished runs of a task: mean and 95% bootstrap interval over seeds per column
    (task metrics, diversity ↑, cost ↓), and the probability of improvement over a baseline."""
    from .errors import ConfigError
    from .reporting import leaderboard as lb

    formats = ("table", "markdown", "csv", "json")
    if fmt not in formats:
        raise ConfigError(f"--format: '{fmt}' is not allowed; allowed: {', '.join(formats)}")
    found = lb.collect_runs(root, task, model)
    for w in found.warnings:
        err_console.print(f"warning: {w}", markup=False)
    if not found.runs:
        raise UserError(f"no finished runs of task '{task}' under {root}")
    try:
        frame = lb.build_leaderboard(found.runs, primary=primary, baseline=baseline)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if plots is not None:
        from .reporting.plots import pareto_plots, training_curves

        models = ", ".join(sorted({r.model for r in found.runs}))
        plots.mkdir(parents=True, exist_ok=True)
        drawn = (pareto_plots(frame, plots, f"{task} on {models}: mean over seeds, 95% bootstrap intervals")
                 + training_curves(found.runs, plots, f"{task} on {models}"))
        err_console.print(f"wrote {len(drawn)} plot files to {plots}")
    if fmt == "table":
        header, body = lb.render_rows(frame)
        table = Table(title=f"{task}: {len(found.runs)} runs under {root}")
        for h in header:
            table.add_column(h)
        for r in body:
            table.add_row(*r)
        if out is None:
            console.print(table)
            return
        from rich.console import Console

        with open(out, "w", encoding="utf-8") as f:
            Console(file=f, width=200).print(table)
        return
    text = {"markdown": lb.to_markdown, "csv": lb.to_csv, "json": lb.to_json}[fmt](frame)
    if out is None:
        print(text, end="")
    else:
        from .io import atomic_write_text

        atomic_write_text(out, text)


@app.command("vae-check")
@user_errors
def vae_check_cmd(
    task: Annotated[str, typer.Option(help="task whose test prompts give the scenes (geneval, ocr)")] = "geneval",
    model: Annotated[str, typer.Option(help="registered model or pkg.module:NAME (shapes domain)")] = "tiny-shapes",
    n: Annotated[int, typer.Option(min=1, help="number of rendered scenes")] = 252,
    seed: Annotated[int, typer.Option(help="seed of prompt choice and scene layout")] = 0,
    out: Annotated[Path | None, typer.Option(help="PNG of 16 originals (left) next to their reconstructions")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a model field, e.g. --set model.source=DIR")] = None,
) -> None:
    """Measure the VAE: reconstruction error, colour fidelity and the task scorer on reconstructions."""
    from .config import apply_overrides
    from .models.spec import get_model
    from .models.vae_check import vae_check
    from .task import get_task

    overrides = apply_overrides({}, set_ or [])
    spec = get_model(model, **overrides.get("model", {}))
    if spec.domain != "shapes":
        raise UserError(f"--model: '{model}' is of domain '{spec.domain}'; vae-check renders ShapesWorld scenes (domain shapes)")
    t = get_task(task)
    rep = vae_check(_load_backbone(spec, "cpu"), t, n, seed)
    originals, recon = rep.pop("images")
    table = Table(title=f"{spec.name} VAE on {n} {t.name} test-prompt scenes (seed {seed})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in rep.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    if out is not None:
        from .reporting.sheet import Tile, contact_sheet, save_png

        tiles = [Tile(im, [label]) for i in range(min(16, n)) for im, label in ((originals[i], "original"),
                                                                                (recon[i], "reconstruction"))]
        save_png(contact_sheet(tiles, cols=8, caption_lines=1), out)
        console.print(f"wrote {out}")


def main() -> None:
    """Console-script entry point: like ``app()``, but a usage error (unknown option, bad option
    value, missing option) ends in one ``error:`` line on stderr with exit status 2, like every
    other bad input, instead of a multi-line box."""
    import sys

    from typer.exceptions import TyperException

    try:
        rc = app(standalone_mode=False)
    except TyperException as exc:  # public base of Typer's usage errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            rc = exc.exit_code  # 2, as click does for a bare command
        else:
            where = f"{ctx.command_path}: " if ctx is not None else ""
            err_console.print(f"error: {where}{exc.format_message()}", markup=False)
            rc = exc.exit_code
    except typer.Abort:
        err_console.print("aborted")
        rc = 130
    sys.exit(rc if isinstance(rc, int) else 0)

if __name__ == "__main__":
    main()

