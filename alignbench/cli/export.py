"""`alignbench export`: a run's LoRA in diffusers' format, with a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, user_errors


@user_errors
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a training run directory (results/runs/<task>/<model>/<algo>/seed…)")],
    out: Annotated[Path, typer.Option(help="destination directory: pytorch_lora_weights.safetensors + README.md")],
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="the EMA LoRA (what the run evaluates) or the raw trained weights")] = True,
) -> None:
    """Write a run's LoRA in diffusers' format: load it with pipe.load_lora_weights(OUT)."""
    from ..export import export_lora

    info = export_lora(run_dir, out, ema=ema)
    console.print(f"wrote {info['path']} ({info['tensors']} tensors, rank {info['rank']}, α {info['alpha']:g}, "
                  f"{'EMA' if info['ema'] else 'raw'} weights after {info['iterations']} iteration(s)) and "
                  f"{Path(out) / 'README.md'}; load with pipe.load_lora_weights(\"{out}\")", markup=False)
