"""The ``emkit`` command line: one sub-command (group) per stage, discovered from this package.

Each module here defines ``register(app)``. Errors print as one line (what was wrong, what to do)
and exit non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer
from rich.console import Console

from emkit.errors import EmkitError

app = typer.Typer(
    name="emkit",
    help="Emergent-misalignment research toolkit: induce, measure, explain, steer, predict, repair.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """emkit: reproduce and extend 'Persona Features Control Emergent Misalignment'."""
    if debug:
        os.environ["EMKIT_DEBUG"] = "1"


for _m in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_m}").register(app)


def main() -> None:
    debug = "--debug" in sys.argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except EmkitError as e:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {e.message}" + (f"\n  [yellow]hint:[/] {e.hint}" if e.hint else ""),
                  highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: what was recorded is kept; run the same command again to resume.")
        sys.exit(130)
