"""The ``emkit`` command line: one sub-command (group) per stage, discovered from this package.

Each module here defines ``register(app)``. Errors print as one line (what was wrong, what to do)
and exit with code 2 (an unexpected failure: one line too, exit 1); ``--debug`` shows the traceback. Text that comes from users, data
files or models is printed with Rich markup off (:func:`plain`, :func:`say`): a ``[/INST]`` in an
answer is text, not a closing tag.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from emkit.errors import EmkitError

app = typer.Typer(
    name="emkit",
    help="Emergent-misalignment research toolkit: induce, measure, explain, steer, predict, repair.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def plain(value: Any) -> Text:
    """A table cell or title from user, data or model text: shown as is, never parsed as markup."""
    return value if isinstance(value, Text) else Text("" if value is None else str(value))


def say(console: Console, *parts: Any, style: str | None = None) -> None:
    """Print user, data or model text with markup and highlighting off."""
    console.print(*parts, style=style, markup=False, highlight=False, soft_wrap=True)


def error_line(e: EmkitError) -> str:
    """The one line a user sees for an error: what was wrong, then what to do."""
    text = " ".join(str(e.message).split())
    return f"error: {text}" + (f" (hint: {' '.join(str(e.hint).split())})" if e.hint else "")


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
        say(err, error_line(e), style="bold red")
        sys.exit(2)
    except MemoryError:
        if debug:
            raise
        say(err, error_line(EmkitError("out of memory", hint="use smaller inputs or batches; --debug shows where")),
            style="bold red")
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: what was recorded is kept; run the same command again to resume.")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - a failure emkit does not know yet: still one line, exit 1
        if debug:
            raise
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        say(err, error_line(EmkitError(f"unexpected {type(e).__name__}: {first[:300]}",
                                       hint="run again with --debug for the traceback, and please report it")),
            style="bold red")
        sys.exit(1)
