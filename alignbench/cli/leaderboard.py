"""`alignbench leaderboard`: render a leaderboard from run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import UserError
from .common import (
    console,
    err_console,
    user_errors,
)


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
    from ..errors import ConfigError
    from ..reporting import leaderboard as lb

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
        from ..reporting.plots import pareto_plots, training_curves

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
        from ..io import atomic_write_text

        atomic_write_text(out, text)
