"""`alignbench list` and `alignbench show`: the registries."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .common import (
    console,
    user_errors,
)


@user_errors
def list_cmd(kind: Annotated[str, typer.Argument(help="algorithms, tasks, models or rewards")]) -> None:
    """List the registered algorithms, tasks, models or rewards."""
    from ..registry import registry_for

    reg = registry_for(kind)
    names = reg.names()
    if not names:
        console.print(f"no {reg.kind}s registered (plugins register through the '{reg.group}' entry-point group)")
        return
    table = Table(title=f"{reg.kind}s")
    table.add_column("name")
    table.add_column("description")
    if reg.kind == "task":
        table.add_column("domains")
    if reg.kind == "algorithm":
        table.add_column("paper")
        table.add_column("group size (paper)", justify="right")
    for name in names:
        obj = reg.get(name)
        row = [name, reg.describe(name)]
        if reg.kind == "task":
            row.append(", ".join(obj.spec.domains))
        if reg.kind == "algorithm":
            row += [getattr(obj, "paper", "") or "—", str(getattr(obj, "group_size", None) or "—")]
        table.add_row(*row)
    console.print(table)


@user_errors
def show_cmd(kind: Annotated[str, typer.Argument(help="algorithm, task, model or reward")],
             name: Annotated[str, typer.Argument(help="registered name or pkg.module:Name")]) -> None:
    """Show one registered entry in detail."""
    from ..registry import registry_for
    from ..task import HubPrompts, get_task, load_metadata

    reg = registry_for(kind)
    obj = get_task(name) if reg.kind == "task" else reg.get(name)
    console.print(f"[bold]{reg.kind} {name}[/bold]: {getattr(obj, 'description', '') or reg.describe(name)}")
    if reg.kind == "task":
        for domain, spec in obj.spec.domains.items():
            # counted without building the reward (a natural-image reward would load its weights)
            if isinstance(spec.prompts, HubPrompts):
                prompts = (f"prompts from the Hub dataset {spec.prompts.dataset} (column '{spec.prompts.column}', "
                           f"{spec.prompts.test_size} test prompts; downloaded on first use)")
            else:
                n_train, n_test = (len(load_metadata(obj.prompt_file(s, domain))) for s in ("train", "test"))
                prompts = f"prompts train {n_train}, test {n_test}"
            reward = (" + ".join(f"{w:g}·{n}" for n, w in spec.reward.items()) if isinstance(spec.reward, dict)
                      else spec.reward)
            console.print(f"  domain {domain}: reward {reward} (trains on '{spec.train_reward}'), "
                          f"metrics {', '.join(spec.metrics)}; {prompts}", markup=False)
    elif reg.kind == "model" and hasattr(obj, "resolved_source"):
        for field, value in obj.model_dump().items():
            if field not in ("name", "description"):
                console.print(f"  {field}: {value}", markup=False)
        console.print(f"  resolved source: {obj.resolved_source()}", markup=False)
    elif reg.kind == "algorithm" and hasattr(obj, "Config"):
        console.print(f"  paper: {obj.paper}", markup=False)
        table = Table(title=f"{name} config (paper defaults; presets: {', '.join(obj.presets) or 'none'})")
        for col in ("field", "default", "source / meaning"):
            table.add_column(col)
        for field, info in obj.Config.model_fields.items():
            table.add_row(field, repr(info.default), info.description or "")
        console.print(table)
        for preset, values in obj.presets.items():
            console.print(f"  preset {preset}: {values}", markup=False)
    elif getattr(obj, "__doc__", None):
        console.print(obj.__doc__.strip(), markup=False)
