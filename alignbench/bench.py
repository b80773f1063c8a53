"""``alignbench bench``: what one training iteration of each algorithm costs on this machine.

For each algorithm the run configuration is resolved exactly as ``compare`` resolves it (the
algorithm's preset for the model, the shared protocol, ``--set protocol.*`` overrides), a trainer is
built in a scratch directory, and ``1 + N`` iterations run without any evaluation: the first is a
warm-up (allocations, caches, lazy imports) and is dropped. From the N others it reports:

* seconds per iteration, total and split into rollout, reward and update: median and minimum;
* NFE (transformer rows) per iteration, rollout NFE and trained transitions per iteration, each
  checked against the plan's analytic count (``RolloutPlan.nfe_per_prompt`` /
  ``edges_per_prompt`` × prompts; ``analytic_ok``);
* transformer rows per second (NFE / total seconds) and peak memory (CUDA: allocated; CPU: RSS);
* the ratio of median seconds per iteration to Flow-GRPO's (when Flow-GRPO is benchmarked).

* the analytic FLOPs of one transformer forward (:mod:`alignbench.flops`), the rollout phase's
  achieved FLOP/s (rollout rows × forward FLOPs / rollout seconds) and, on CUDA, its model FLOP
  utilisation against the device's measured dense bf16 matmul peak
  (:func:`~alignbench.flops.matmul_peak_flops`; ``mfu_rollout`` is null on the CPU).

Results go to ``<out>/<machine>/<model>.json`` and ``.md``.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .io import atomic_write_text, write_json


def machine_label(device: str) -> str:
    """A folder name for the machine: the CUDA device name, or ``<arch>-<N>cpu``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"{platform.machine()}-{os.cpu_count()}cpu"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-")


def bench_algorithm(algo: str, task: str, model: str, iterations: int, device: str = "cpu",
                    overrides: list[str] | None = None, seed: int = 0,
                    progress: Callable[[str, int, int], None] | None = None,
                    peak_flops: float | None = None, speedups_on: bool = True) -> dict[str, Any]:
    """Run 1 warm-up + ``iterations`` training iterations of ``algo`` and summarise their cost.

    ``speedups_on``: the engine's result-preserving speed-ups (:mod:`alignbench.perf`) on or off;
    runs with the same arguments draw the same rollouts, so ``reward_means`` (per iteration) and
    ``update_nfe_per_iteration`` show what the speed-ups changed.

    Returns:
        ``{"algorithm", "iterations", "seconds": {phase: {"median", "min"}}, "nfe_per_iteration",
        "nfe_rollout_per_iteration", "trained_edges_per_iteration", "analytic_ok", "rows_per_second",
        "peak_memory_mb", "protocol", "rows"}``.

    Raises:
        ConfigError: a bad override (names the field).
    """
    from .models.spec import ModelSpec, get_model
    from .perf import speedups
    from .training.trainer import Trainer, resolve_run_config, task_for_run

    extra = []
    if get_model(model).random and not any(o.startswith("eval.features_source=") for o in overrides or []):
        extra = ["eval.features_source=pooled"]  # GARDO's diversity features without DINOv2 weights
    cfg = resolve_run_config(algo, task, model, seed, overrides=[*(overrides or []), *extra],
                             iterations=iterations + 1)
    spec = ModelSpec.model_validate(cfg["model"])
    backbone = spec.load(device)
    t = task_for_run(cfg, device)
    from .flops import backbone_forward_flops

    forward = backbone_forward_flops(backbone)
    rows = []
    with tempfile.TemporaryDirectory(prefix="alignbench-bench-") as tmp, speedups(speedups_on):
        trainer = Trainer(Path(tmp), cfg, backbone, t)
        for it in range(iterations + 1):
            t0 = time.perf_counter()
            rows.append(trainer.iteration(it))
            rows[-1]["wall"] = time.perf_counter() - t0
            if progress:
                progress(algo, it + 1, iterations + 1)
    measured = rows[1:]  # the first iteration is the warm-up

    def stat(values: list[float]) -> dict[str, float]:
        return {"median": float(statistics.median(values)), "min": float(min(values))}

    seconds = {k: stat([r["seconds"][k] for r in measured]) for k in ("total", "rollout", "reward", "update")}
    mean = lambda k: float(statistics.fmean(r[k] for r in measured))  # noqa: E731
    # achieved model FLOP/s of the rollout phase: transformer rows × analytic forward FLOPs / seconds
    rollout_flops = float(statistics.median(r["nfe_rollout"] * forward / r["seconds"]["rollout"] for r in measured))
    return {
        "algorithm": algo, "speedups": speedups_on, "iterations": iterations, "seconds": seconds,
        "nfe_per_iteration": mean("nfe"), "nfe_rollout_per_iteration": mean("nfe_rollout"),
        "trained_edges_per_iteration": mean("trained_edges"),
        "update_nfe_per_iteration": float(statistics.fmean(r["nfe"] - r["nfe_rollout"] for r in measured)),
        "reward_means": [r["reward_mean"] for r in rows],
        "plan_nfe_rollout_per_iteration": mean("plan_nfe_rollout"),
        "plan_trained_edges_per_iteration": mean("plan_trained_edges"),
        "analytic_ok": all(r["nfe_rollout"] == r["plan_nfe_rollout"] and r["trained_edges"] == r["plan_trained_edges"]
                           for r in rows),
        "rows_per_second": float(statistics.median(r["nfe"] / r["seconds"]["total"] for r in measured)),
        "peak_memory_mb": float(max(r["peak_memory_mb"] for r in rows)),
        "forward_gflops": forward / 1e9,
        "rollout_tflops_per_s": rollout_flops / 1e12,
        "mfu_rollout": rollout_flops / peak_flops if peak_flops else None,
        "protocol": cfg["protocol"],
        "rows": [{k: r[k] for k in ("iteration", "nfe", "nfe_rollout", "plan_nfe_rollout", "trained_edges",
                                    "plan_trained_edges", "seconds")} for r in rows],
    }


def render_markdown(result: dict[str, Any]) -> str:
    """The bench table: one row per algorithm, seconds as median (min), and the ratio to Flow-GRPO."""
    head = ["algorithm", "s/it median (min)", "rollout s", "reward s", "update s", "NFE/it", "rollout NFE/it",
            "edges/it", "update NFE/it", "analytic counts", "rows/s", "rollout TFLOP/s", "rollout MFU", "peak MB",
            "÷ flow_grpo"]
    both = len({a.get("speedups", True) for a in result["algorithms"]}) == 2
    if both:
        head = head[:1] + ["speed-ups"] + head[1:] + ["÷ off", "same rewards"]
    runs = result.get("runs") or [result]
    produced = "; then ".join(f"`{r['command']}` on {r['date']} (alignbench commit {r['commit']})" for r in runs)
    lines = [f"# bench: {result['model']} on {result['machine']}", "",
             f"Produced by {produced}; device {result['device']}, torch {result['torch']}, {result['threads']} threads; "
             f"{result['iterations']} measured iterations after one warm-up, task {result['task']}. "
             f"Seconds per phase are medians. One transformer forward: {result['algorithms'][0]['forward_gflops']:.1f} "
             "GFLOP per sample (analytic, alignbench.flops). "
             + (f"MFU against the measured dense {result['peak_dtype']} matmul peak of "
                f"{result['peak_tflops']:.0f} TFLOP/s." if result.get("peak_tflops") else
                "MFU needs a CUDA device and is not reported here."), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if both:
        lines[2] += (" Each algorithm ran twice from the same seed: speed-ups off (the engine before issue 19's "
                     "item 4) and on; \"same rewards\" compares the reward means of every iteration.")
    for a in result["algorithms"]:
        on = a.get("speedups", True)
        base = next((b for b in result["algorithms"] if b["algorithm"] == "flow_grpo" and b.get("speedups", True) == on),
                    None)
        s = a["seconds"]
        ratio = f"{s['total']['median'] / base['seconds']['total']['median']:.2f}" if base else "—"
        cells = [a["algorithm"], f"{s['total']['median']:.2f} ({s['total']['min']:.2f})", f"{s['rollout']['median']:.2f}",
                 f"{s['reward']['median']:.2f}", f"{s['update']['median']:.2f}", f"{a['nfe_per_iteration']:.0f}",
                 f"{a['nfe_rollout_per_iteration']:.0f}", f"{a['trained_edges_per_iteration']:.0f}",
                 f"{a.get('update_nfe_per_iteration', float('nan')):.0f}",
                 "match" if a["analytic_ok"] else "MISMATCH", f"{a['rows_per_second']:.0f}",
                 f"{a['rollout_tflops_per_s']:.3g}",
                 f"{100 * a['mfu_rollout']:.1f}%" if a.get("mfu_rollout") is not None else "—",
                 f"{a['peak_memory_mb']:.0f}", ratio]
        if both:
            off = next(b for b in result["algorithms"] if b["algorithm"] == a["algorithm"] and not b.get("speedups", True))
            cells.insert(1, "on" if on else "off")
            cells.append(f"{s['total']['median'] / off['seconds']['total']['median']:.2f}")
            same = max(abs(x - y) for x, y in zip(a["reward_means"], off["reward_means"], strict=True))
            cells.append("yes" if same == 0 else f"max Δ {same:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_stem(model: str, task: str) -> str:
    """The table's file name without suffix: ``<model>`` for the model's default bench task
    (geneval; ``bench`` for the random architectures), ``<model>-<task>`` for any other task."""
    from .models.spec import get_model

    default = "bench" if get_model(model).random else "geneval"
    return model if task == default else f"{model}-{task}"


def write_bench(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``<out>/<machine>/<stem>.json`` and ``.md`` (:func:`table_stem`); returns both paths."""
    folder = Path(out) / result["machine"]
    folder.mkdir(parents=True, exist_ok=True)
    stem = table_stem(result["model"], result["task"])
    jpath, mpath = folder / f"{stem}.json", folder / f"{stem}.md"
    write_json(jpath, result)
    atomic_write_text(mpath, render_markdown(result))
    return jpath, mpath
