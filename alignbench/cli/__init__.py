"""The ``alignbench`` command line (Typer + rich). A thin layer: each command parses its options,
calls library code, and prints. Bad input ends in one line on stderr and exit status 2.

Each command group lives in its own module of this package; the Typer app is assembled here.
"""

from __future__ import annotations

import typer

from . import bench, compare, evaluate, export, info, leaderboard, pretrain, report, score, train, world
from .common import PlainProgress, console, err_console, user_errors
from .compare import _still_busy

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="alignbench: online RL alignment of flow-matching text-to-image models, benchmarked.")
world_app = typer.Typer(no_args_is_help=True, help="The embedded ShapesWorld: sample sheets and prompt splits.")
app.add_typer(world_app, name="world")

app.command("list")(info.list_cmd)
app.command("show")(info.show_cmd)
world_app.command("sample")(world.world_sample)
world_app.command("splits")(world.world_splits)
world_app.command("validate")(world.world_validate)
app.command("score")(score.score_cmd)
app.command("pretrain")(pretrain.pretrain_cmd)
app.command("eval")(evaluate.eval_cmd)
app.command("run")(train.run_cmd)
app.command("compare")(compare.compare_cmd)
app.command("leaderboard")(leaderboard.leaderboard_cmd)
app.command("vae-check")(evaluate.vae_check_cmd)
app.command("export")(export.export_cmd)
app.command("report")(report.report_cmd)
app.command("bench")(bench.bench_cmd)

__all__ = ["PlainProgress", "_still_busy", "app", "console", "err_console", "main", "user_errors"]


def main() -> None:
    """Console-script entry point: like ``app()``, but a usage error (unknown option, bad option
    value, missing option) ends in one ``error:`` line on stderr with exit status 2, like every
    other bad input, instead of a multi-line box."""
    import sys

    from typer.exceptions import TyperException

    try:
        rc = app(standalone_mode=False)
    except TyperException as exc:  # public base of Typer's usage errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            rc = exc.exit_code  # 2, as click does for a bare command
        else:
            where = f"{ctx.command_path}: " if ctx is not None else ""
            err_console.print(f"error: {where}{exc.format_message()}", markup=False)
            rc = exc.exit_code
    except typer.Abort:
        err_console.print("aborted")
        rc = 130
    sys.exit(rc if isinstance(rc, int) else 0)
