"""``emkit demo``: the main job — the whole study on tiny settings, offline, with its report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

out = Console()


def save_screenshot(report: Path) -> Path | None:
    """A PNG of the report next to it, when Chromium is installed (None otherwise)."""
    from emkit.errors import EmkitError
    from emkit.report.browser import chromium_path, screenshot

    if chromium_path() is None:
        return None
    try:
        return screenshot(report, report.parent / "screenshot.png", height=2400)
    except EmkitError as e:
        out.print(f"[yellow]no screenshot:[/] {e}")
        return None


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out_dir: Path = typer.Option(Path("runs/smoke"), "--out", "-o", help="Run folder."),
        recipe: str = typer.Option("smoke", "--recipe", help="Recipe to run (default: recipes/smoke.yaml)."),
    ) -> None:
        """Run every stage of the study on tiny settings with the bundled model (offline, ~10 min on a
        2-core CPU) and write the HTML report. Running it again resumes or re-renders at once.

        Example: emkit demo --out runs/smoke
        """
        from emkit.pipeline import load_recipe, run_pipeline

        r = load_recipe(recipe)
        path = run_pipeline(r, out=out_dir)
        report = path / "report" / "index.html"
        shot = save_screenshot(report)
        out.print(f"[bold]report:[/] {report}" + (f"\n[bold]screenshot:[/] {shot}" if shot else ""))
