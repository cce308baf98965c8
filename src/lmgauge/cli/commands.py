"""The `lmgauge` Typer application: every command registered here, explicitly, in the order
`lmgauge --help` lists them, and `main`, the entry point that turns errors into one line.

Every error a user can cause is a LmgaugeError: printed on one line to stderr, exit code 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..errors import LmgaugeError
from . import batch, bench, cache, context, gateway, memory, models, quality, route, run
from .console import err, out


def _flag_takes_no_value(display: Any) -> Any:
    """typer 0.29 prints `<bool>` after plain flags (`--json <bool>`, `--help <bool>`), which reads
    as if the flag wanted a value; a flag shows none (options with values keep `<str>`, `<int>`)."""

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return "" if getattr(self, "is_flag", False) and self.metavar is None else display(self, ctx)

    return display_type_rich


if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    typer.core.TyperOption.display_type_rich = (  # type: ignore[method-assign]  # a patch of typer's help
        _flag_takes_no_value(typer.core.TyperOption.display_type_rich)
    )

app = typer.Typer(
    name="lmgauge",
    help="Measure, size, route and serve local language models (embedded llama.cpp, Ollama, "
    "OpenAI-compatible servers). Start with `lmgauge demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        out.print(f"lmgauge version {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", "-v", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Measure, size, route and serve local language models (embedded llama.cpp, Ollama,
    OpenAI-compatible servers). Start with `lmgauge demo`."""


eval_app = typer.Typer(help="Rerunnable, seeded, offline evaluations (context, routing, cache).", no_args_is_help=True)
memory_app = typer.Typer(
    help="Long-term memory: the facts, preferences and decisions `lmgauge chat --memory` "
    "keeps about you (list, search, edit, forget).",
    no_args_is_help=True,
)
route_app = typer.Typer(
    help="Send each request to the cheapest model that can answer it (model name `auto`).", no_args_is_help=True
)
cache_app = typer.Typer(help="The response cache: statistics, clearing.", no_args_is_help=True)

GROUPS = ((eval_app, "eval"), (memory_app, "memory"), (route_app, "route"), (cache_app, "cache"))

# (group, command name or None for the function's, function), in the order `--help` lists them.
COMMANDS: tuple[tuple[typer.Typer, str | None, Callable[..., None]], ...] = (
    (app, None, run.run),
    (app, None, models.models),
    (app, None, models.ps),
    (app, None, models.rm),
    (app, None, models.show),
    (app, None, models.demo),
    (app, None, models.size),
    (app, None, context.chat),
    (app, None, gateway.serve),
    (app, "log", gateway.log_cmd),
    (app, None, bench.bench),
    (app, None, bench.load),
    (app, None, bench.report),
    (app, None, bench.compare),
    (app, None, gateway.monitor),
    (app, None, bench.runs),
    (app, None, batch.batch),
    (app, None, quality.quality),
    (eval_app, "context", context.eval_context),
    (eval_app, "routing", route.eval_routing),
    (eval_app, "cache", cache.eval_cache),
    (memory_app, "list", memory.memory_list),
    (memory_app, "search", memory.memory_search),
    (memory_app, "edit", memory.memory_edit),
    (memory_app, "forget", memory.memory_forget),
    (route_app, "explain", route.route_explain),
    (route_app, "ask", route.route_ask),
    (route_app, "calibrate", route.route_calibrate),
    (cache_app, "stats", cache.cache_stats),
    (cache_app, "clear", cache.cache_clear),
)

for sub_app, group_name in GROUPS:
    app.add_typer(sub_app, name=group_name)
for group, name, command in COMMANDS:
    group.command(name)(command)


def main() -> None:
    """Entry point: one-line errors, never a traceback (unless LMGAUGE_DEBUG is set)."""
    debug = os.environ.get("LMGAUGE_DEBUG")
    if os.environ.get("LMGAUGE_LOG"):
        import logging

        logging.basicConfig(level=os.environ["LMGAUGE_LOG"].upper())
    try:
        app()
    except LmgaugeError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {exc}", markup=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, with the way to see more
        if debug:
            raise
        err.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {exc} "
            "(set LMGAUGE_DEBUG=1 to see the traceback, and please report it)",
            markup=True,
        )
        sys.exit(2)
