"""Leaderboards built only from run directories (DESIGN.md run-directory layout).

A finished training run ``<root>/<task>/<model>/<algo>/seed<k>-<time>/`` contributes its final
evaluation (``eval.json``), its base-model evaluation (``eval_base.json``) and its cost figures
(``summary.json`` → ``cost``). One row per algorithm aggregates its seeds: the mean with a 95%
bootstrap interval (:mod:`alignbench.reporting.stats`) of every column, and the probability of
improvement of the task's primary metric over a baseline. The base model is one extra row (its
evaluation is the same for every run of a model, so the first readable one is used). Because the
final and base evaluations of a run score the same (prompt, noise) pairs, each row also counts the
images whose primary metric got better or worse than the base model's, pooled over seeds, with the
exact sign test's p-value (``eval_base.jsonl`` against ``eval.jsonl``). A run with a
missing or unreadable ``eval.json`` is skipped with a warning that names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..io import read_jsonl
from .stats import bootstrap_ci, probability_of_improvement, sign_test

#: diversity columns (higher = more diverse) and cost columns (lower = cheaper) after the task metrics
DIVERSITY = ("lgmd", "cosine_diversity", "vendi")
COST = ("seconds_per_iteration", "nfe_per_iteration", "trained_edges_per_iteration", "peak_memory_mb")
LABELS = {"lgmd": "LGMD", "cosine_diversity": "cos-div", "vendi": "Vendi", "seconds_per_iteration": "s/it",
          "nfe_per_iteration": "NFE/it", "trained_edges_per_iteration": "edges/it", "peak_memory_mb": "peak MB"}


@dataclass
class RunRecord:
    """One finished run: its identity, final and base values per column, and its directory."""

    path: Path
    task: str
    model: str
    algo: str
    seed: int
    values: dict[str, float]
    base: dict[str, float]
    headline: list[str] = field(default_factory=list)
    #: per metric, (images better, images worse) than the base model on the same (prompt, noise)
    paired: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Collected:
    """Runs found under a root, and one warning line per skipped run directory."""

    runs: list[RunRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _eval_values(summary: dict[str, Any]) -> dict[str, float]:
    out = {k: float(v) for k, v in summary["metrics"]["overall"].items() if k != "n"}
    for k in DIVERSITY:
        if k in summary:
            out[k] = float(summary[k])
    return out


def paired_counts(run_dir: str | Path) -> dict[str, tuple[int, int]]:
    """Per numeric metric of the per-image evaluation rows, (images whose final value is higher,
    images whose final value is lower) than the base model's value on the same
    (``prompt_index``, ``image_index``). Empty when either file is missing or unreadable, or when
    the two evaluations do not cover the same images."""
    d = Path(run_dir)
    try:
        base = {(r["prompt_index"], r["image_index"]): r for r in read_jsonl(d / "eval_base.jsonl")}
        final = {(r["prompt_index"], r["image_index"]): r for r in read_jsonl(d / "eval.jsonl")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not base or base.keys() != final.keys():
        return {}
    first = next(iter(base.values()))
    skip = {"prompt_index", "image_index", "seed"}
    keys = [k for k, v in first.items() if k not in skip and not k.startswith("cost_")
            and isinstance(v, int | float) and not isinstance(v, bool)]
    out = {}
    for k in keys:
        pairs = [(final[i].get(k), base[i].get(k)) for i in base]
        if all(isinstance(a, int | float) and isinstance(b, int | float) for a, b in pairs):
            out[k] = (sum(a > b for a, b in pairs), sum(a < b for a, b in pairs))
    return out


def collect_runs(root: str | Path, task: str | None = None, model: str | None = None) -> Collected:
    """Finished training runs under ``root`` (optionally one task / one model).

    Unfinished runs (status not ``finished``) are left out silently (they are in progress or
    resumable). A run whose ``eval.json`` (or ``run.json``) is missing or unreadable is left out
    with a warning.
    """
    out = Collected()
    for run_json in sorted(Path(root).rglob("run.json")):
        d = run_json.parent
        try:
            meta = json.loads(run_json.read_text())
        except (OSError, ValueError) as exc:
            out.warnings.append(f"{d}: unreadable run.json ({type(exc).__name__}); left out")
            continue
        if meta.get("kind") != "train" or meta.get("status") != "finished":
            continue
        cfg = meta.get("config", {})
        t, m = cfg.get("task"), cfg.get("model", {}).get("name")
        if (task and t != task) or (model and m != model):
            continue
        try:
            final = json.loads((d / "eval.json").read_text())
            values = _eval_values(final)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.warnings.append(f"{d}: missing or corrupt eval.json ({type(exc).__name__}); left out")
            continue
        base: dict[str, float] = {}
        try:
            base = _eval_values(json.loads((d / "eval_base.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        cost = final.get("cost")
        if cost is None:  # runs written before eval.json carried the cost figures
            try:
                cost = json.loads((d / "summary.json").read_text()).get("cost", {})
            except (OSError, ValueError):
                cost = {}
        values.update({k: float(cost[k]) for k in COST if k in cost})
        out.runs.append(RunRecord(d, t, m, cfg.get("algorithm", d.parent.name), int(meta.get("seed", 0)), values, base,
                                  [k for k in final.get("headline", []) if k in values], paired_counts(d)))
    return out


def columns_for(runs: list[RunRecord]) -> list[tuple[str, str]]:
    """(column, direction) pairs: the task's metrics (↑) in the task's order (``headline`` of the
    evaluation: the first is the primary metric), the diversity columns (↑), then the cost columns (↓)."""
    seen: list[str] = list(next((r.headline for r in runs if r.headline), []))
    for r in runs:
        for k in r.values:
            if k not in seen and k not in DIVERSITY and k not in COST:
                seen.append(k)
    cols = [(k, "↑") for k in seen]
    cols += [(k, "↑") for k in DIVERSITY if any(k in r.values for r in runs)]
    cols += [(k, "↓") for k in COST if any(k in r.values for r in runs)]
    return cols


def build_leaderboard(runs: list[RunRecord], primary: str | None = None, baseline: str = "base",
                      seed: int = 0) -> pd.DataFrame:
    """One row for the base model and one per algorithm (sorted by the primary metric's mean,
    best first).

    For every column ``c`` the frame holds ``c`` (mean over seeds), ``c_low`` and ``c_high`` (95%
    bootstrap interval; NaN with one seed), plus ``seeds``, ``p_improve`` (probability that the
    algorithm's primary metric beats ``baseline``'s: the base model's value, or another algorithm's
    seeds), ``paired_better`` / ``paired_worse`` (images whose primary metric beats / trails the
    base model's on the same prompt and noise, summed over seeds; NaN when no run has per-image
    rows), ``paired_p`` (the exact sign test of those counts) and the column directions in
    ``frame.attrs["directions"]``.

    Raises:
        ValueError: no runs, or an unknown primary metric or baseline.
    """
    if not runs:
        raise ValueError("no finished runs to put on a leaderboard")
    cols = columns_for(runs)
    names = [c for c, _ in cols]
    primary = primary or names[0]
    if primary not in names:
        raise ValueError(f"primary metric '{primary}' is not a column; allowed: {', '.join(names)}")
    by_algo: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_algo.setdefault(r.algo, []).append(r)
    if baseline != "base" and baseline not in by_algo:
        raise ValueError(f"baseline '{baseline}' has no runs; allowed: base, {', '.join(sorted(by_algo))}")
    base_values = next((r.base for r in runs if r.base), {})
    ref = ([base_values[primary]] if baseline == "base" and primary in base_values
           else [r.values[primary] for r in by_algo.get(baseline, []) if primary in r.values])
    rows = []
    if base_values:
        row: dict[str, Any] = {"algorithm": "base model", "seeds": 0}
        for c in names:
            row[c], row[f"{c}_low"], row[f"{c}_high"] = base_values.get(c, float("nan")), float("nan"), float("nan")
        row["p_improve"] = float("nan")
        row["paired_better"] = row["paired_worse"] = row["paired_p"] = float("nan")
        rows.append(row)
    for algo, rs in by_algo.items():
        row = {"algorithm": algo, "seeds": len(rs)}
        for c in names:
            vals = [r.values[c] for r in rs if c in r.values]
            if not vals:
                row[c], row[f"{c}_low"], row[f"{c}_high"] = (float("nan"),) * 3
                continue
            ci = bootstrap_ci(vals, seed=seed)
            row[f"{c}_n"] = len(vals)
            row[c] = ci.mean
            row[f"{c}_low"] = ci.low if ci.low is not None else float("nan")
            row[f"{c}_high"] = ci.high if ci.high is not None else float("nan")
        mine = [r.values[primary] for r in rs if primary in r.values]
        row["p_improve"] = probability_of_improvement(mine, ref) if mine and ref and algo != baseline else float("nan")
        counts = [r.paired[primary] for r in rs if primary in r.paired]
        if counts:
            better, worse = sum(c[0] for c in counts), sum(c[1] for c in counts)
            row["paired_better"], row["paired_worse"], row["paired_p"] = better, worse, sign_test(better, worse)
        else:
            row["paired_better"] = row["paired_worse"] = row["paired_p"] = float("nan")
        rows.append(row)
    frame = pd.DataFrame(rows)
    body = frame[frame["algorithm"] != "base model"].sort_values(primary, ascending=False)
    frame = pd.concat([frame[frame["algorithm"] == "base model"], body], ignore_index=True)
    frame.attrs["directions"] = dict(cols)
    frame.attrs["primary"] = primary
    frame.attrs["baseline"] = baseline
    return frame


def _cell(row: pd.Series, c: str) -> str:
    v, lo, hi = row[c], row.get(f"{c}_low"), row.get(f"{c}_high")
    if pd.isna(v):
        return "—"
    digits = 1 if c in ("seconds_per_iteration", "peak_memory_mb") else 0 if c in (
        "nfe_per_iteration", "trained_edges_per_iteration") else 3
    s = f"{v:.{digits}f}"
    if lo is not None and not pd.isna(lo):
        s += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    n = row.get(f"{c}_n")
    if n is not None and not pd.isna(n) and row["seeds"] and int(n) != int(row["seeds"]):
        s += f" (n={int(n)})"  # only some seeds' runs report this column
    return s


def render_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header (with directions) and formatted rows: mean [95% interval] per column."""
    dirs = frame.attrs["directions"]
    header = ["algorithm", "seeds", *(f"{LABELS.get(c, c)} {d}" for c, d in dirs.items()),
              f"P(>{frame.attrs['baseline']}) on {frame.attrs['primary']}",
              f"images +/− vs base on {frame.attrs['primary']} (sign-test p)"]
    body = []
    for _, row in frame.iterrows():
        cells = [row["algorithm"], str(int(row["seeds"])) if row["seeds"] else "—"]
        cells += [_cell(row, c) for c in dirs]
        cells.append("—" if pd.isna(row["p_improve"]) else f"{row['p_improve']:.2f}")
        cells.append("—" if pd.isna(row.get("paired_p", float("nan"))) else
                     f"+{int(row['paired_better'])}/−{int(row['paired_worse'])} (p={row['paired_p']:.2f})")
        body.append(cells)
    return header, body


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of :func:`render_rows`."""
    header, body = render_rows(frame)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def to_csv(frame: pd.DataFrame) -> str:
    """Every numeric column (means, interval ends, seeds, p_improve) as CSV."""
    return frame.to_csv(index=False)


def to_json(frame: pd.DataFrame) -> str:
    """Rows as JSON objects plus the column directions, primary metric and baseline."""
    payload = {"directions": frame.attrs["directions"], "primary": frame.attrs["primary"],
               "baseline": frame.attrs["baseline"],
               "rows": json.loads(frame.to_json(orient="records"))}
    return json.dumps(payload, indent=2)
