"""`alignbench world …`: sample sheets, prompt splits and the scorer's validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import UserError
from .common import (
    _progress,
    _summary_table,
    _world_config,
    console,
    err_console,
    user_errors,
)


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
    from ..io import write_jsonl
    from ..reporting.sheet import contact_sheet, save_png, tile_for
    from ..scoring import summarize_rows
    from ..task import get_task
    from ..world.sample import render_records, sample_records

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


@user_errors
def world_splits(
    out: Annotated[Path, typer.Option(help="directory for the four JSON-lines files")] = Path("tasks/data"),
    check: Annotated[bool, typer.Option(help="compare with the shipped files instead of writing; exit 1 on a difference")] = False,
    seed: Annotated[int, typer.Option(help="split seed (43 = shipped, GenEval's default)")] = 43,
) -> None:
    """Regenerate the fixed-seed train/test prompt splits of geneval and ocr (byte-identical)."""
    import tempfile
    from importlib import resources

    from ..world.prompts import write_splits

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

    from ..world.validate import confusion_rows, validate_detector, validate_ocr

    if task not in ("geneval", "ocr"):
        raise UserError(f"--task '{task}' is not measurable here; allowed: geneval, ocr")
    with _progress() as bar:
        job = bar.add_task(f"validating {task} scorer", total=n)
        step = lambda: bar.advance(job)  # noqa: E731
        rep = (validate_detector(n, seed, progress=step, blur=blur) if task == "geneval"
               else validate_ocr(n, seed, progress=step))
    threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count())
    if task == "geneval":
        from ..world.palette import CLASSES

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
