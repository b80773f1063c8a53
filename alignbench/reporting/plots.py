"""Pareto plots and training curves (matplotlib, PNG and SVG) from a leaderboard frame and run
directories.

* ``pareto_<x>.png/.svg``: the task's primary metric (y, higher is better) against LGMD, cosine
  diversity (x, higher is better) or seconds per iteration (x, lower is better). Each algorithm is
  its mean over seeds, with 95% bootstrap intervals as error bars in both directions. The base model
  is a black star. The Pareto front (points no other point beats on both axes) is ringed and joined
  by a dashed line.
* ``curves.png/.svg``: per algorithm, the training reward and the LGMD of the rollout leaves per
  iteration (mean over seeds, shaded min–max over seeds).

Every algorithm has one colour in all plots of all tasks (:func:`algorithm_colors`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .leaderboard import LABELS, RunRecord

X_AXES = (("lgmd", True), ("cosine_diversity", True), ("seconds_per_iteration", False))

#: the built-in algorithms, which take matplotlib's tab10 colours C0–C4 in this order in every plot
BUILTIN_ORDER = ("flow_grpo", "mixgrpo", "treegrpo", "gardo", "tmpo")
_PALETTE = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9")  # C7 (grey) is the Pareto front's


def algorithm_colors(names: list[str]) -> dict[str, str]:
    """A fixed matplotlib colour per algorithm name, so that one algorithm has one colour in every
    plot of every task: the built-ins of :data:`BUILTIN_ORDER` always take C0–C4; any other name
    takes the next free colour of the palette in sorted order (cycling after nine names)."""
    fixed = {n: _PALETTE[i] for i, n in enumerate(BUILTIN_ORDER)}
    others = sorted(set(names) - set(fixed))
    fixed.update({n: _PALETTE[(len(BUILTIN_ORDER) + j) % len(_PALETTE)] for j, n in enumerate(others)})
    return {n: fixed[n] for n in names}


def pareto_front(xs: np.ndarray, ys: np.ndarray, x_higher_better: bool) -> list[int]:
    """Indices of the non-dominated points, sorted by x (y is always higher-is-better).

    A point is dominated when another is at least as good on both axes and strictly better on one.
    """
    sx = xs if x_higher_better else -xs
    keep = []
    for i in range(len(xs)):
        dominated = any((sx[j] >= sx[i] and ys[j] >= ys[i]) and (sx[j] > sx[i] or ys[j] > ys[i])
                        for j in range(len(xs)) if j != i)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: xs[i])


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def pareto_plots(frame: pd.DataFrame, out_dir: str | Path, title: str) -> list[Path]:
    """One plot per available x axis of :data:`X_AXES`; returns the written files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    primary = frame.attrs["primary"]
    written: list[Path] = []
    algos = frame[frame["algorithm"] != "base model"]
    base = frame[frame["algorithm"] == "base model"]
    for x, higher in X_AXES:
        if x not in frame or algos[x].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        pts = algos.dropna(subset=[x, primary])
        colors = algorithm_colors(list(pts["algorithm"]))
        for _, row in pts.iterrows():
            xerr = None if pd.isna(row[f"{x}_low"]) else [[row[x] - row[f"{x}_low"]], [row[f"{x}_high"] - row[x]]]
            yerr = (None if pd.isna(row[f"{primary}_low"])
                    else [[row[primary] - row[f"{primary}_low"]], [row[f"{primary}_high"] - row[primary]]])
            ax.errorbar(row[x], row[primary], xerr=xerr, yerr=yerr, fmt="o", capsize=3,
                        color=colors[row["algorithm"]], label=f"{row['algorithm']} (n={int(row['seeds'])})")
        if not base.empty and not pd.isna(base.iloc[0].get(x, np.nan)):
            ax.plot(base.iloc[0][x], base.iloc[0][primary], marker="*", color="black", markersize=13,
                    linestyle="none", label="base model")
        if len(pts) > 1:
            # front members are ringed, so that a front of one point (it beats every other on both
            # axes) is visible too
            front = pareto_front(pts[x].to_numpy(float), pts[primary].to_numpy(float), higher)
            ax.plot(pts[x].to_numpy(float)[front], pts[primary].to_numpy(float)[front], "--o", color="grey",
                    linewidth=1, markersize=13, markerfacecolor="none", label="Pareto front")
        ax.set_xlabel(f"{LABELS.get(x, x)} ({'higher' if higher else 'lower'} is better)")
        ax.set_ylabel(f"{primary} (higher is better)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        written += _save(fig, out_dir, f"pareto_{x}")
        plt.close(fig)
    return written


def training_curves(runs: list[RunRecord], out_dir: str | Path, title: str) -> list[Path]:
    """Reward and rollout-leaf LGMD per iteration for every algorithm (from ``metrics.jsonl``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_algo: dict[str, list[pd.DataFrame]] = {}
    for r in runs:
        path = r.path / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            by_algo.setdefault(r.algo, []).append(pd.DataFrame(rows))
    if not by_algo:  # no run has per-iteration metrics: nothing to draw
        return []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = algorithm_colors(sorted(by_algo))
    for algo, frames in sorted(by_algo.items()):
        for ax, key in zip(axes, ("reward_mean", "lgmd_train"), strict=True):
            series = [f.set_index("iteration")[key] for f in frames if key in f]
            if not series:
                continue
            table = pd.concat(series, axis=1)
            smooth = table.rolling(5, min_periods=1).mean()
            mean = smooth.mean(axis=1)
            ax.plot(mean.index, mean.values, color=colors[algo], label=f"{algo} (n={len(series)})")
            ax.fill_between(mean.index, smooth.min(axis=1), smooth.max(axis=1), color=colors[algo], alpha=0.15)
    # each algorithm's rollouts use its own sampler (SDE everywhere for Flow-GRPO, ODE outside the
    # branch points for the tree methods), so levels differ between algorithms from iteration 0
    axes[0].set_ylabel("training reward under own sampler\n(5-iteration mean)")
    axes[1].set_ylabel("LGMD of rollout leaves (5-iteration mean)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    paths = _save(fig, out_dir, "curves")
    plt.close(fig)
    return paths
