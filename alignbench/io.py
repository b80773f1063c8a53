"""Small file helpers: atomic writes (temp file + rename) and JSON lines."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` as UTF-8 (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Atomically write one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON with a trailing newline."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def plain_state(obj: Any) -> Any:
    """``obj`` with NumPy scalars and arrays turned into Python numbers and tensors, tuples kept,
    recursively through dicts and lists: what :func:`load_checkpoint_file` (``weights_only=True``)
    accepts."""
    import numpy as np
    import torch

    if isinstance(obj, dict):
        return {k: plain_state(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain_state(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor | str | int | float | bool | None):
        return obj
    raise TypeError(f"checkpoint state holds a {type(obj).__name__}; only tensors and plain containers are saved")


def save_checkpoint_file(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (tensors, numbers, strings and dict/list/tuple containers only;
    see :func:`plain_state`) with ``torch.save``."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(plain_state(state), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint_file` with ``torch.load(weights_only=True)``:
    tensors and plain containers only, so a crafted file cannot run code when it is loaded.

    Raises:
        UserError: the file holds other Python objects (a crafted pickle, or a checkpoint written by
            alignbench before checkpoints were restricted to plain data), or cannot be read at all.
    """
    import pickle

    import torch

    from .errors import UserError

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        what = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in what if "GLOBAL" in ln or "Unsupported" in ln), what[0] if what else "")
        raise UserError(f"checkpoint '{path}' was refused: it holds Python objects other than tensors and plain "
                        f"containers, which could run code when loaded ({detail[:160]}); a checkpoint written by an "
                        "older alignbench cannot be resumed safely, start the run again") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise UserError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}); delete it to start again") from None
