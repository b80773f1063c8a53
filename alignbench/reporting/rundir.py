"""Run directories (DESIGN.md, "Run directory and results"):
``results/runs/<task>/<model>/<algo>/seed<k>-<timestamp>/`` holding ``run.json`` (resolved config,
versions, git commit, hardware, seed, status), ``eval.jsonl``/``eval.json``, ``samples/`` and, for
training runs, ``metrics.jsonl`` and ``checkpoint/``. Every file is written atomically."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import write_json

DEFAULT_ROOT = Path("results/runs")


def safe_name(name: str) -> str:
    """A path component for ``name``: characters other than letters, digits, ``.``, ``_`` and ``-``
    (e.g. the ``:`` of a dotted path ``pkg.mod:Algo``) become ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def new_run_dir(root: str | Path, task: str, model: str, algo: str, seed: int) -> Path:
    """Create and return a fresh ``<root>/<task>/<model>/<algo>/seed<k>-<UTC timestamp>`` directory
    (a numeric suffix is added if that name exists); the names go through :func:`safe_name`."""
    safe = safe_name
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = Path(root) / safe(task) / safe(model) / safe(algo) / f"seed{seed}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    path.mkdir(parents=True)
    return path


class RunBusyError(UserError):
    """Another live process holds the lock of a run directory (or of a run configuration).

    Attributes:
        path: the lock file.
        holder: what the holder wrote into it ("pid <n> on <host>"), or "" if unreadable.
    """

    def __init__(self, what: str, path: Path, holder: str):
        self.path, self.holder = path, holder
        super().__init__(f"{what} is in use by another process ({holder or 'owner unknown'}); wait for it to "
                         "finish or stop it, then run the command again")


def _holder_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[Path]:
    """Hold an exclusive advisory lock (``fcntl.flock``, non-blocking) on the file ``path`` for the
    duration of the block, with "pid <n> on <host>" written into it. The operating system drops the
    lock when the process exits, however it exits (Ctrl-C, SIGKILL, power loss of the process), so
    a stale lock file never blocks a later run.

    Raises:
        RunBusyError: another live process holds the lock; the message names ``what`` and the holder.

    On platforms without ``fcntl`` (Windows) the block runs unlocked."""
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(what, path, _holder_text(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def lock_holder(path: str | Path) -> str | None:
    """Who holds the lock on ``path`` ("pid <n> on <host>"), or None if nobody does (the file may
    be absent or left by a process that has exited)."""
    path = Path(path)
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)  # a probe: it never writes the file, so a holder's name stays
    except (ImportError, OSError):  # no fcntl (Windows), no such file, or unreadable: nobody to report
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder_text(path) or "owner unknown"
    finally:
        os.close(fd)


def run_lock_path(run_dir: str | Path) -> Path:
    """The lock file of a run directory: held by the process that trains into it."""
    return Path(run_dir) / ".lock"


def config_lock_path(root: str | Path, config: dict[str, Any]) -> Path:
    """The lock file that claims one resolved run configuration under ``root`` (so that two
    ``compare`` processes never start or resume the same run): ``<root>/<task>/<model>/<algo>/
    .seed<k>-<first 12 hex digits of the SHA-256 of the canonical config JSON>.lock``."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    where = Path(root) / safe_name(config["task"]) / safe_name(config["model"]["name"]) / safe_name(config["algorithm"])
    return where / f".seed{config['seed']}-{digest}.lock"


@functools.cache
def git_commit() -> str | None:
    """The alignbench checkout's HEAD commit (None outside a git checkout), read once per process:
    a long ``compare`` records the commit its code was loaded from, not one made while it ran."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions and hardware for ``run.json``."""
    import diffusers
    import torch
    import transformers

    from .. import __version__
    from ..perf import SPEEDUPS

    env = {"alignbench": __version__, "git_commit": git_commit(), "python": platform.python_version(),
           "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "command": command_line(), "speedups": dict(SPEEDUPS)}
    return env


def command_line() -> str:
    """The command this process runs, as a shell line (``alignbench run --algo tmpo ...``)."""
    import shlex
    import sys

    args = list(sys.argv)
    if args and Path(args[0]).name in ("alignbench", "cli.py", "__main__.py"):
        args[0] = "alignbench"
    return shlex.join(args)


def write_run_json(run_dir: Path, kind: str, config: dict[str, Any], seed: int, status: str,
                   extra: dict[str, Any] | None = None) -> None:
    """(Re)write ``run.json``: kind (eval/train), status (running/finished/failed), seed, config,
    environment and timestamps."""
    path = run_dir / "run.json"
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    old = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {"kind": kind, "status": status, "seed": seed, "config": config,
                      "environment": old.get("environment") or environment(),
                      "started": old.get("started", now), "updated": now, **(extra or {})})


#: Files of a run that a published comparison carries, so that ``alignbench leaderboard`` over the
#: published folder reproduces the leaderboard (the per-image rows are slimmed, see :func:`publish_runs`).
PUBLISHED_FILES = ("run.json", "eval.json", "eval_base.json", "summary.json", "metrics.jsonl")
PUBLISHED_ROWS = ("eval.jsonl", "eval_base.jsonl")
PUBLISHED_GRIDS = ("samples/eval_base_grid.png", "samples/eval_grid.png")


def slim_row(row: dict[str, Any]) -> dict[str, Any]:
    """An evaluation row without its details (detections, readings, reasons): the prompt and image
    indices, seed, tag and prompt, and every numeric score."""
    keep = {"prompt_index", "image_index", "seed", "tag", "prompt"}
    return {k: v for k, v in row.items()
            if k in keep or (isinstance(v, int | float) and not isinstance(v, bool))}


def publish_runs(run_dirs: list[Path], dest: str | Path) -> list[Path]:
    """Copy the runs of a comparison into ``dest/<algorithm>/seed<k>/``: :data:`PUBLISHED_FILES` and
    the sample grids (:data:`PUBLISHED_GRIDS`) as they are, and :data:`PUBLISHED_ROWS` with each row slimmed by :func:`slim_row` (every number the
    leaderboard's paired column compares is kept). ``dest`` is replaced as a whole. Returns the
    published run folders.

    Raises:
        FileNotFoundError: a run lacks one of the files.
    """
    import shutil

    from ..io import read_jsonl, write_jsonl

    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    out = []
    for d in run_dirs:
        meta = json.loads((d / "run.json").read_text())
        cfg = meta["config"]
        target = tmp / safe_name(cfg["algorithm"]) / f"seed{int(meta.get('seed', 0))}"
        target.mkdir(parents=True, exist_ok=True)
        for f in PUBLISHED_FILES:
            shutil.copy2(d / f, target / f)
        for f in PUBLISHED_ROWS:
            write_jsonl(target / f, [slim_row(r) for r in read_jsonl(d / f)])
        for f in PUBLISHED_GRIDS:  # the before/after sample grids of alignbench report
            if (d / f).is_file():
                (target / f).parent.mkdir(exist_ok=True)
                shutil.copy2(d / f, target / f)
        out.append(dest / target.relative_to(tmp))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return out
