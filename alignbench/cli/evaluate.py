"""`alignbench eval` and `alignbench vae-check`: the evaluation protocol on a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import UserError
from .common import (
    _progress,
    _set_threads,
    _summary_table,
    console,
    user_errors,
)


@user_errors
def eval_cmd(
    task: Annotated[str, typer.Option(help="task name (geneval, ocr), pkg.module:NAME or task YAML")] = "geneval",
    model: Annotated[str, typer.Option(help="registered model (tiny-shapes, flux-dev) or pkg.module:NAME")] = "tiny-shapes",
    images_per_prompt: Annotated[int | None, typer.Option(min=2, help="K images per prompt (default: the model and task's evaluation preset, e.g. 16 and ≥ 192 per tag for tiny-shapes GenEval; else 4)")] = None,
    images_per_tag: Annotated[int | None, typer.Option(min=1, help="at least this many images per tag (default: the preset's)")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="ODE steps (default: the model's eval_steps)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the per-image initial noises (same noises for every model)")] = 0,
    split: Annotated[str, typer.Option(help="prompt split: test, train or dev (train prompts held out of training)")] = "test",
    max_prompts: Annotated[int | None, typer.Option(min=1, help="first N prompts only")] = None,
    out: Annotated[Path, typer.Option(help="root of run directories")] = Path("results/runs"),
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, …")] = "cpu",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a model or reward field, e.g. --set model.source=/path/to/FLUX.1-dev, --set reward.source=DIR")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's choice)")] = None,
) -> None:
    """Evaluate a model (no training) with the evaluation protocol; writes a run directory."""
    _set_threads(threads)
    from ..config import apply_overrides
    from ..evaluation import EvalConfig, evaluate, write_eval
    from ..models.spec import get_model
    from ..reporting.rundir import new_run_dir, write_run_json
    from ..task import get_task

    overrides = apply_overrides({}, set_ or [])
    unknown = sorted(set(overrides) - {"model", "reward"})
    if unknown:
        raise UserError(f"--set {unknown[0]}: unknown section; allowed: model, reward")
    if split not in ("train", "test", "dev"):
        raise UserError(f"--split: '{split}' is not allowed; allowed: test, train, dev")
    spec = get_model(model, **overrides.get("model", {}))
    t = get_task(task).with_reward_options({"device": device, **overrides.get("reward", {})})
    t.domain(spec.domain)
    from ..evaluation import eval_preset

    # the model's preset, then the task file's `defaults.eval` (as `run` layers them), then the options
    task_eval = t.spec.defaults.get("eval", {})
    layered = {**eval_preset(spec.name, t.name),
               **{k: v for k, v in task_eval.items() if k in ("images_per_prompt", "images_per_tag",
                                                              "batch_size", "grid_prompts")}}
    given = {k: v for k, v in {"images_per_prompt": images_per_prompt, "images_per_tag": images_per_tag}.items()
             if v is not None}
    cfg = EvalConfig(**{**layered, **given, "split": split, "steps": steps, "seed": seed, "max_prompts": max_prompts})
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
    console.print(_summary_table(f"{t.name}: {summary['n_prompts']} prompts, {summary['n_images']} images "
                                 f"(≥ {summary['images_per_prompt']} per prompt), {summary['steps']} ODE steps",
                                 metrics, keys))
    se = {k: v for k, v in summary.get("standard_error", {}).items() if v is not None}
    if se:
        console.print("standard error of the overall figures: " + ", ".join(f"{k} {v:.4f}" for k, v in se.items()))
    console.print(f"LGMD {summary['lgmd']:.3f}   cosine diversity {summary['cosine_diversity']:.3f}   "
                  f"Vendi {summary['vendi']:.2f}   (sampling {summary['seconds']['sample']:.1f} s, "
                  f"scoring {summary['seconds']['score']:.1f} s)")


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
    from ..config import apply_overrides
    from ..models.spec import get_model
    from ..models.vae_check import vae_check
    from ..task import get_task

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
        from ..reporting.sheet import Tile, contact_sheet, save_png

        tiles = [Tile(im, [label]) for i in range(min(16, n)) for im, label in ((originals[i], "original"),
                                                                                (recon[i], "reconstruction"))]
        save_png(contact_sheet(tiles, cols=8, caption_lines=1), out)
        console.print(f"wrote {out}")
