"""Experiment trackers through accelerate (``--report-to none|tensorboard|wandb|all``).

What a run sends (main process only, as accelerate does):

* every iteration, at step = iteration: the scalars of the ``metrics.jsonl`` row — reward mean/std
  and per-key rewards, advantage statistics, loss, KL, clip fraction, approximate KL, ratio mean,
  grad norm, lr, rollout LGMD, NFE, trained transitions, leaves, the seconds of each phase;
* after each evaluation (``eval_base`` at step 0, ``eval`` at the last iteration): the per-tag metric
  table (scalars ``<prefix>/<tag>/<metric>``, plus the table itself: a W&B Table, or a Markdown
  text in TensorBoard), LGMD and cosine diversity, and the sample grid as an image.

TensorBoard needs ``pip install "alignbench[tensorboard]"`` and W&B ``pip install
"alignbench[wandb]"``; neither is imported unless asked for. Files go to ``<run>/trackers/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError

TRACKERS = ("none", "tensorboard", "wandb", "all")


def trackers_for(report_to: str) -> list[str]:
    """The accelerate tracker names for a ``--report-to`` value.

    Raises:
        UserError: unknown value, or the tracker's package is not installed (names the extra).
    """
    if report_to not in TRACKERS:
        raise UserError(f"--report-to: '{report_to}' is not allowed; allowed: {', '.join(TRACKERS)}")
    names = {"none": [], "tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"]}[report_to]
    import importlib.util

    for name in names:
        module = "tensorboard" if name == "tensorboard" else "wandb"
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--report-to {report_to}: the package '{module}' is not installed; "
                            f"pip install \"alignbench[{name}]\"")
    return names


def _scalars(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) dict as {"a/b": value}; bools, lists and strings are left out."""
    out: dict[str, float] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_scalars(v, key + "/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


class RunTrackers:
    """Sends a run's figures to the accelerate trackers of ``accelerator`` (a no-op when it has none).

    Args:
        accelerator: an ``accelerate.Accelerator`` created with ``log_with`` (or without: no-op).
        run_dir: the run directory (tracker files under ``trackers/``).
        config: the run config (sent as the tracker run's hyper-parameters).
    """

    def __init__(self, accelerator, run_dir: Path, config: dict[str, Any]):
        self.acc = accelerator
        self.enabled = bool(getattr(accelerator, "log_with", None))
        if not self.enabled:
            return
        run_dir = Path(run_dir)
        flat = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in _scalars_or_str(config).items()}
        project = f"alignbench-{config.get('task', 'run')}"
        accelerator.init_trackers(project, config=flat,
                                  init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir / "trackers")}})

    def log_iteration(self, row: dict[str, Any]) -> None:
        """The scalars of one ``metrics.jsonl`` row at step = its iteration."""
        if self.enabled:
            values = {f"train/{k}": v for k, v in _scalars(row).items() if k not in ("iteration",)}
            self.acc.log(values, step=int(row["iteration"]))

    def log_eval(self, prefix: str, summary: dict[str, Any], grid: Path | None, step: int) -> None:
        """An evaluation: per-tag metrics as scalars and as a table, diversity, and the sample grid."""
        if not self.enabled:
            return
        metrics = summary.get("metrics", {})
        values = {f"{prefix}/{tag}/{k}": float(v) for tag, row in metrics.items() for k, v in row.items()
                  if isinstance(v, int | float) and not isinstance(v, bool)}
        for k in ("lgmd", "cosine_diversity", "vendi"):
            if isinstance(summary.get(k), int | float):
                values[f"{prefix}/{k}"] = float(summary[k])
        self.acc.log(values, step=step)
        keys = sorted({k for row in metrics.values() for k in row})
        rows = [[tag, *[row.get(k) for k in keys]] for tag, row in metrics.items()]
        image = None
        if grid is not None and Path(grid).is_file():
            import numpy as np
            from PIL import Image

            image = np.asarray(Image.open(grid).convert("RGB"))
        for tracker in self.acc.trackers:
            if tracker.name == "tensorboard":
                header = "| tag | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1) + "\n"
                body = "".join("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in r) + " |\n"
                               for r in rows)
                tracker.writer.add_text(f"{prefix}/table", header + body, global_step=step)
                if image is not None:
                    tracker.writer.add_image(f"{prefix}/samples", image, global_step=step, dataformats="HWC")
                tracker.writer.flush()
            elif tracker.name == "wandb":
                tracker.log_table(f"{prefix}/table", columns=["tag", *keys], data=rows, step=step)
                if image is not None:
                    tracker.log_images({f"{prefix}/samples": [image]}, step=step)

    def finish(self) -> None:
        """Close the trackers (flush files, end the W&B run)."""
        if self.enabled:
            self.acc.end_training()


def _scalars_or_str(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config flattened to {"a/b": leaf}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_scalars_or_str(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
