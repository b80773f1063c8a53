"""Helpers shared by the command modules: consoles, the one-line error wrapper, progress output,
signal handling and tables."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import UserError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def user_errors(fn):
    """Turn :class:`UserError` into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from .. import perf  # noqa: F401 - checks ALIGNBENCH_SPEEDUPS before any work or run directory

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
    from ..config import resolve
    from ..world.scene import WorldConfig

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


