"""`alignbench score`: score a folder of images against prompt metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .common import (
    _progress,
    _summary_table,
    console,
    err_console,
    user_errors,
)


@user_errors
def score_cmd(
    task: Annotated[str, typer.Option(help="task name (geneval, ocr), pkg.module:NAME or task YAML")],
    images: Annotated[Path, typer.Option(help="folder of images named by metadata index: 00000.png, 00000_1.png, …")],
    metadata: Annotated[Path, typer.Option(help="JSON-lines prompt metadata (the task's format)")],
    out: Annotated[Path, typer.Option(help="per-image JSON lines to write")] = Path("scores.jsonl"),
) -> None:
    """Score a folder of images against prompt metadata; print a per-tag table and write one JSON
    line per image."""
    from ..io import write_jsonl
    from ..scoring import scan_folder, score_folder, summarize_rows
    from ..task import get_task, load_metadata

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
