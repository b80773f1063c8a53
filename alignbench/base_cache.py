"""The base-model evaluation cache: the evaluation of a model's untrained weights is a function of
(model and weights revision, task and its test prompts, evaluation protocol, device type), so
``run`` and ``compare`` compute it once and copy it into every run directory that needs it.

Entries live in ``<run root>/.base_eval/<key>/`` (``eval_base.json``, ``eval_base.jsonl``,
``samples/eval_base_grid.png``, ``key.json`` with what the key was made of). The key is the SHA-256
of those ingredients, so any change of the model config (source, revision, sampling steps, CFG), of
the test prompt file's content, of the evaluation config (split, images, steps, noise seed) or of
:data:`CACHE_VERSION` (bumped when scoring code changes what an evaluation returns) makes a new
entry. Entries are written to a temporary folder and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: Bump when the evaluation or scoring code changes the figures of an unchanged model.
CACHE_VERSION = 1
FILES = ("eval_base.json", "eval_base.jsonl", "samples/eval_base_grid.png")


def cache_ingredients(config: dict[str, Any], task, device: str) -> dict[str, Any]:
    """What a base evaluation depends on: the run config's model and eval sections, the reward
    options that change scores (source, sources, revision, dtype, formula; not the device or batch
    size), the task's name and the SHA-256 of its test prompt file, the device type and
    :data:`CACHE_VERSION`."""
    domain = config["model"]["domain"]
    prompts = Path(task.prompt_file(config["eval"].get("split", "test"), domain)).read_bytes()
    ingredients = {"version": CACHE_VERSION, "model": config["model"], "eval": config["eval"], "task": task.name,
                   "prompts_sha256": hashlib.sha256(prompts).hexdigest(), "device": str(device).split(":")[0]}
    from .rewards.pretrained import RewardOptions

    defaults = RewardOptions().model_dump()
    reward = {k: v for k, v in (config.get("reward") or {}).items() if k not in ("device", "batch_size")}
    if any(v != defaults.get(k) for k, v in reward.items()):  # default options keep the keys of older entries
        ingredients["reward"] = reward
    return ingredients


def cache_key(ingredients: dict[str, Any]) -> str:
    """SHA-256 (first 20 hex digits) of the canonical JSON of the ingredients."""
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()[:20]


class BaseEvalCache:
    """The cache under ``root`` (``<run root>/.base_eval``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry(self, ingredients: dict[str, Any]) -> Path:
        """The entry folder for these ingredients (it may not exist)."""
        return self.root / cache_key(ingredients)

    def fetch(self, ingredients: dict[str, Any], run_dir: Path) -> bool:
        """Copy a cached base evaluation into ``run_dir``; returns whether there was one."""
        entry = self.entry(ingredients)
        if not all((entry / f).is_file() for f in FILES):
            return False
        for f in FILES:
            (run_dir / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry / f, run_dir / f)
        return True

    def store(self, ingredients: dict[str, Any], run_dir: Path) -> Path | None:
        """Copy ``run_dir``'s base evaluation into the cache (atomically); returns the entry, or None
        if the run directory lacks one of the files or the entry exists already."""
        entry = self.entry(ingredients)
        if entry.exists() or not all((run_dir / f).is_file() for f in FILES):
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))
        for f in FILES:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / f, tmp / f)
        (tmp / "key.json").write_text(json.dumps(ingredients, indent=2, sort_keys=True))
        try:
            os.rename(tmp, entry)
        except OSError:  # another process stored the same entry meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        return entry
