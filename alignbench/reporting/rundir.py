"""Run directories (DESIGN.md, "Run directory and results"):
``results/runs/<task>/<model>/<algo>/seed<k>-<timestamp>/`` holding ``run.json`` (resolved config,
versions, git commit, hardware, seed, status), ``eval.jsonl``/``eval.json``, ``samples/`` and, for
training runs, ``metrics.jsonl`` and ``checkpoint/``. Every file is written atomically."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

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


def git_commit() -> str | None:
    """The alignbench checkout's HEAD commit (None outside a git checkout)."""
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

    env = {"alignbench": __version__, "git_commit": git_commit(), "python": platform.python_version(),
           "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return env


def write_run_json(run_dir: Path, kind: str, config: dict[str, Any], seed: int, status: str,
                   extra: dict[str, Any] | None = None) -> None:
    """(Re)write ``run.json``: kind (eval/train), status (running/finished/failed), seed, config,
    environment and timestamps."""
    path = run_dir / "run.json"
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    import json

    old = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {"kind": kind, "status": status, "seed": seed, "config": config,
                      "environment": old.get("environment") or environment(),
                      "started": old.get("started", now), "updated": now, **(extra or {})})
