"""`alignbench pretrain`: pretrain the embedded backbone (and draw its learning curves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .common import (
    _progress,
    _set_threads,
    _signals_request_stop,
    console,
    user_errors,
)


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
    reference: Annotated[list[Path] | None, typer.Option(help="with --plot: a probe summary JSON of a saved pipeline (scripts/probe_pipeline.py), drawn as a dashed line labelled with the file name (repeatable)")] = None,
) -> None:
    """Pretrain the embedded backbone on ShapesWorld: VAE, then transformer + text encoders.

    With --set probe.every=N the dev probe (train-split prompts, EMA weights) is scored every N
    images seen and appended to probe.jsonl; --plot draws those learning curves."""
    import time

    import torch

    from ..config import resolve
    from ..models.pretrain import PretrainConfig, Pretrainer

    if plot is not None:
        from ..models.pretrain.probe import plot_curves

        dirs = [out, *(with_ or [])]
        refs = {}
        for path in reference or []:
            try:
                refs[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"--reference: cannot read '{path}' as a probe summary JSON ({type(exc).__name__})") from None
        tags = plot_curves(dirs, plot, references=refs)
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
                bar.console.print(f"probe at {row['images']:,} images: " + ", ".join(parts))
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
