"""`alignbench report`: a static HTML page per task (leaderboard, plots, before/after sample grids)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, user_errors


@user_errors
def report_cmd(
    task: Annotated[str, typer.Option(help="task name (geneval, ocr)")] = "geneval",
    results: Annotated[Path | None, typer.Option(help="the task's published results (leaderboard.json, LEADERBOARD.md, plots); default results/<task>")] = None,
    runs: Annotated[Path | None, typer.Option(help="where run directories with sample grids are looked for (recursively); default: the published runs <results>/runs if present, else results/runs")] = None,
    out: Annotated[Path | None, typer.Option(help="where index.html goes (default: the results directory)")] = None,
) -> None:
    """Write one static HTML page for a task: leaderboard with intervals, Pareto plots and curves,
    and each algorithm's sample grid before/after on the same prompts and noises. No server, no CDN."""
    from ..reporting.html import build_report

    results = results or Path("results") / task
    if runs is None:
        runs = results / "runs" if (results / "runs").is_dir() else Path("results/runs")
    info = build_report(task, results, runs, out)
    missing = [a for a in info["algorithms"] if a not in info["with_samples"]]
    note = f"; no sample grids found for {', '.join(missing)} under {runs}" if missing else ""
    console.print(f"wrote {info['path']} ({len(info['algorithms'])} algorithms, {len(info['plots'])} plots{note})",
                  markup=False)
