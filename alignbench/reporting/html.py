"""``alignbench report``: one static HTML page per task (no server, no CDN; every file beside it).

The page shows, from a task's published results directory (``results/<task>/``):

* the provenance paragraph of ``LEADERBOARD.md`` (command, dates, machine, commits);
* the leaderboard of ``leaderboard.json`` with its 95% intervals (the same cells as the Markdown);
* the Pareto plots and training curves (``pareto_*.png``, ``curves.png``);
* for each algorithm, the evaluation sample grid of the base model and of the trained model on the
  same prompts and the same initial noises (``samples/eval_base_grid.png`` and
  ``samples/eval_grid.png`` of one of its runs, the lowest seed found), copied beside the page.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import atomic_write_text

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
p.prov { font-size: .85rem; color: #555; }
table { border-collapse: collapse; font-size: .8rem; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; font-weight: 600; }
tr.base td { background: #fafae6; }
.plots { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; align-items: start; }
.plots img { width: 100%; border: 1px solid #eee; } .plots a.wide { grid-column: 1 / span 2; }
.pair { display: flex; gap: 1rem; align-items: flex-start; margin-bottom: 1.4rem; flex-wrap: wrap; }
.pair figure { margin: 0; } .pair img { image-rendering: pixelated; width: 420px; border: 1px solid #ccc; }
figcaption { font-size: .8rem; color: #555; }
.scroll { overflow-x: auto; }
"""


def _leaderboard_frame(results: Path):
    """The published leaderboard (``leaderboard.json``) as the frame :func:`render_rows` formats."""
    import pandas as pd

    path = results / "leaderboard.json"
    if not path.is_file():
        raise UserError(f"report: no leaderboard.json in '{results}'; run alignbench compare (or leaderboard) first")
    payload = json.loads(path.read_text())
    frame = pd.DataFrame(payload["rows"])
    frame.attrs.update(directions=payload["directions"], primary=payload["primary"], baseline=payload["baseline"])
    return frame


def _provenance(results: Path) -> str:
    """The first paragraph after the title of ``LEADERBOARD.md`` (how the numbers were produced)."""
    md = results / "LEADERBOARD.md"
    if not md.is_file():
        return ""
    paras = [p.strip() for p in md.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    body = [p for p in paras if not p.startswith("#") and not p.startswith("|")]
    return body[0] if body else ""


def _sample_runs(runs_root: Path, task: str) -> dict[str, Path]:
    """{algorithm: run directory with both sample grids}, the lowest seed per algorithm."""
    found: dict[str, tuple[int, Path]] = {}
    if not runs_root.is_dir():
        return {}
    for run_json in runs_root.rglob("run.json"):
        d = run_json.parent
        try:
            meta = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue
        cfg = meta.get("config", {})
        if meta.get("kind") != "train" or meta.get("status") != "finished" or cfg.get("task") != task:
            continue
        if not ((d / "samples" / "eval_base_grid.png").is_file() and (d / "samples" / "eval_grid.png").is_file()):
            continue
        algo, seed = cfg.get("algorithm"), int(cfg.get("seed", 0))
        if algo not in found or seed < found[algo][0]:
            found[algo] = (seed, d)
    return {a: d for a, (s, d) in sorted(found.items())}


def build_report(task: str, results: str | Path, runs_root: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write ``index.html`` (and its ``samples/`` images) for ``task`` into ``out`` (default: ``results``).

    Args:
        task: the task name (runs are matched on it).
        results: the task's published directory (``leaderboard.json``, ``LEADERBOARD.md``, plots).
        runs_root: where run directories are searched for sample grids (recursively).
        out: destination directory; plots are copied there when it is not ``results``.

    Returns:
        ``{"path", "algorithms", "with_samples", "plots"}``.

    Raises:
        UserError: no ``leaderboard.json`` in ``results``.
    """
    from .leaderboard import render_rows

    results, runs_root = Path(results), Path(runs_root)
    out = Path(out) if out is not None else results
    out.mkdir(parents=True, exist_ok=True)
    frame = _leaderboard_frame(results)
    header, body = render_rows(frame)
    algos = [a for a in frame["algorithm"] if a != "base model"]
    plots = sorted(p.name for p in results.glob("*.png"))
    for name in plots:
        if out.resolve() != results.resolve():
            shutil.copy2(results / name, out / name)
    samples = _sample_runs(runs_root, task)
    (out / "samples").mkdir(exist_ok=True)
    e = html.escape
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>alignbench: {e(task)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>alignbench — {e(task)}: matched comparison</h1>"]
    prov = _provenance(results)
    if prov:
        parts.append(f"<p class=\"prov\">{e(prov)}</p>")
    parts.append("<h2>Leaderboard</h2><div class=\"scroll\"><table id=\"leaderboard\"><thead><tr>"
                 + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for row in body:
        cls = " class=\"base\"" if row[0] == "base model" else ""
        parts.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    parts.append("</tbody></table></div><p class=\"prov\">Mean over seeds [95% bootstrap interval]; ↑ higher is "
                 "better, ↓ lower is better.</p>")
    if plots:
        parts.append("<h2>Pareto plots and training curves</h2><div class=\"plots\">")
        ordered = [p for p in plots if p.startswith("curves")] + [p for p in plots if not p.startswith("curves")]
        for p in ordered:
            wide = ' class="wide"' if p.startswith("curves") else ""
            parts.append(f'<a href="{e(p)}"{wide}><img src="{e(p)}" alt="{e(p)}"></a>')
        parts.append("</div>")
    parts.append("<h2>What each method did to the images</h2><p>Each pair shows the base model and the trained "
                 "model on the same test prompts and the same initial noises (the first prompts of the test "
                 "split × 4 images; each tile is captioned with the scorer's verdict).</p>")
    with_samples = []
    for algo in algos:
        run = samples.get(algo)
        parts.append(f"<h3 id=\"samples-{e(algo)}\">{e(algo)}</h3>")
        if run is None:
            parts.append(f"<p>No finished {e(algo)} run with sample grids under <code>{e(str(runs_root))}</code>.</p>")
            continue
        before, after = f"samples/{algo}_before.png", f"samples/{algo}_after.png"
        shutil.copy2(run / "samples" / "eval_base_grid.png", out / before)
        shutil.copy2(run / "samples" / "eval_grid.png", out / after)
        seed = json.loads((run / "run.json").read_text())["config"].get("seed")
        parts.append(f"<div class=\"pair\"><figure><img src=\"{e(before)}\" alt=\"base model\"><figcaption>base model"
                     f"</figcaption></figure><figure><img src=\"{e(after)}\" alt=\"{e(algo)}\"><figcaption>{e(algo)}, "
                     f"seed {seed} ({e(run.name)})</figcaption></figure></div>")
        with_samples.append(algo)
    parts.append("</body></html>\n")
    path = out / "index.html"
    atomic_write_text(path, "\n".join(parts))
    return {"path": path, "algorithms": algos, "with_samples": with_samples, "plots": plots}
