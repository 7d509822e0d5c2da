"""``emkit models list|convert``."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from emkit.cli import say

out = Console()


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="Inspect and prepare models.", no_args_is_help=True)
    app.add_typer(models, name="models")

    @models.command("list")
    def list_models() -> None:
        """List the built-in model names and whether the bundled model is converted.

        Example: emkit models list
        """
        from emkit.models import bundled

        t = Table("name", "status", "path")
        try:
            src = str(bundled.gguf_path())
            status = "converted" if bundled.is_converted() else "not converted (emkit models convert)"
            path = str(bundled.converted_path()) if bundled.is_converted() else src
        except Exception as e:  # package missing
            status, path = f"unavailable: {e}", "-"
        t.add_row(bundled.NAME, status, path)
        out.print(t)
        out.print("Any local model folder (config.json + *.safetensors) or Hub id also works as --model.")

    @models.command("convert")
    def convert(force: bool = typer.Option(False, help="Convert again even if a copy exists.")) -> None:
        """Convert the bundled SmolLM2-135M-Instruct GGUF to a safetensors copy in $EMKIT_CACHE.

        Example: emkit models convert
        """
        from emkit.models import bundled

        path = bundled.convert(force=force)
        say(out, f"bundled model ready at {path}")
