"""`alignbench bench`: seconds, NFE and memory per training iteration of each algorithm."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .common import _progress, _set_threads, console, user_errors


def _appended(new: dict, old: dict) -> dict:
    """``new`` merged into ``old``, the table on disk for its machine and model (see ``--append``).

    Raises:
        UserError: the tables differ in task, device, iterations, overrides, threads or speed-ups.
    """
    path = f"the {new['machine']}/{new['model']} table"
    for key in ("task", "device", "iterations", "overrides", "speedups", "threads"):
        if old.get(key) != new[key]:
            raise UserError(f"--append: {path} has {key} {old.get(key)!r}, this run {new[key]!r}; "
                            "allowed: the same task, device, iterations, --set, threads and --speedups")
    names = {a["algorithm"] for a in new["algorithms"]}
    runs = old.get("runs") or [{k: old[k] for k in ("command", "commit", "date", "torch")}]
    merged = dict(new)
    merged["algorithms"] = [a for a in old["algorithms"] if a["algorithm"] not in names] + new["algorithms"]
    merged["runs"] = [*runs, {k: new[k] for k in ("command", "commit", "date", "torch")}]
    return merged


@user_errors
def bench_cmd(
    model: Annotated[str, typer.Option(help="registered model (tiny-shapes, flux-dev, …) or pkg.module:NAME")] = "tiny-shapes",
    algo: Annotated[str, typer.Option(help="comma-separated algorithms")] = "flow_grpo,mixgrpo,treegrpo,gardo,tmpo",
    task: Annotated[str | None, typer.Option(help="task whose prompts and reward the iterations use (default: "
                                                  "geneval; bench for the random architectures)")] = None,
    iterations: Annotated[int, typer.Option(min=1, help="measured iterations per algorithm (after one warm-up)")] = 3,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, …")] = "cpu",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override protocol.* or model.* fields (the same for every algorithm)")] = None,
    out: Annotated[Path, typer.Option(help="root of the bench tables: <out>/<machine>/<model>.json and .md (<model>-<task>.* for a task other than the default)")] = Path("results/bench"),
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's choice)")] = None,
    speedups: Annotated[str, typer.Option(help="the engine's result-preserving speed-ups (alignbench.perf): on, off, "
                                                "or both (each algorithm off then on, with a ÷ off column)")] = "on",
    append: Annotated[bool, typer.Option(help="add these algorithms to the existing table of this machine and "
                                              "model (same task, device, iterations, --set and speed-ups), "
                                              "replacing their old rows; the table lists every command")] = False,
) -> None:
    """Measure one training iteration of each algorithm (no evaluation): seconds split into rollout,
    reward and update (median and min over the iterations after a warm-up), NFE and trained
    transitions checked against the plan's analytic counts, rows per second, peak memory."""
    import torch

    from ..bench import bench_algorithm, machine_label, render_markdown, table_stem, write_bench
    from ..reporting.rundir import command_line, git_commit

    _set_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device: '{device}' requested but CUDA is not available here; allowed: cpu")
    from ..models.spec import get_model

    if task is None:
        task = "bench" if get_model(model).random else "geneval"
    peak = None
    if device.startswith("cuda"):
        from ..flops import matmul_peak_flops

        peak = matmul_peak_flops(device, "bfloat16")
    if speedups not in ("on", "off", "both"):
        raise UserError(f"--speedups: '{speedups}' is not allowed; allowed: on, off, both")
    settings = {"on": [True], "off": [False], "both": [False, True]}[speedups]
    names = [a.strip() for a in algo.split(",") if a.strip()]
    bad = [o for o in (set_ or []) if not o.startswith(("protocol.", "model."))]
    if bad:
        raise UserError(f"--set {bad[0]}: bench shares one protocol; allowed sections: protocol, model")
    import json

    machine = machine_label(device)
    prior = out / machine / f"{table_stem(model, task)}.json"
    old = json.loads(prior.read_text()) if append and prior.is_file() else None
    results: list[dict] = []

    def table() -> dict:
        result = {"model": model, "task": task, "machine": machine, "device": device,
                  "iterations": iterations, "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "commit": git_commit() or "unknown", "command": command_line(),
                  "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "algorithms": list(results),
                  "peak_tflops": peak / 1e12 if peak else None, "peak_dtype": "bfloat16",
                  "overrides": list(set_ or []), "speedups": speedups}
        return _appended(result, old) if old is not None else result

    if old is not None:
        table()  # refuse a mismatched table before spending any time
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def report(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"bench {name}", total=total, per_step=True)
            bar.update(tasks[name], completed=done)

        for name in names:
            for on in settings:
                label = name if len(settings) == 1 else f"{name} ({'on' if on else 'off'})"
                results.append(bench_algorithm(name, task, model, iterations, device, set_ or [],
                                               progress=lambda _n, d, t, label=label: report(label, d, t),
                                               peak_flops=peak, speedups_on=on))
                # written after every algorithm (atomically), so that a failure later keeps the rows so far
                jpath, mpath = write_bench(table(), out)
    result = table()
    console.print(render_markdown(result), markup=False)
    console.print(f"wrote {jpath} and {mpath}", markup=False)
