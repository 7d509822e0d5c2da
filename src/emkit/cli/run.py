"""``emkit run`` (the whole study from a recipe) and ``emkit report`` (re-render a run's report)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from emkit.cli import say

out = Console()


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        recipe: str = typer.Argument(..., help="Recipe YAML (or the name of one in recipes/, e.g. smoke)."),
        only: str = typer.Option(None, "--only", help="Run just this stage (its inputs must be done)."),
        start: str = typer.Option(None, "--from", help="Run from this stage on, re-running it and later ones."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and a time estimate; run nothing."),
        out_dir: Path = typer.Option(None, "--out", "-o", help="Run folder (default: the recipe's, runs/<name>)."),
        wait: bool = typer.Option(False, "--wait", help="If another process has the run folder open, wait for it."),
    ) -> None:
        """Run the study a recipe describes: baseline, fine-tunes, evals, SAE, diff, interpret, steer,
        predict, re-align, report. Finished stages with unchanged settings are skipped, so a killed
        run resumes where it stopped and a finished one re-renders its report at once.

        Stages: baseline, finetune, evaluate, sae, diff, interpret, steer, predict, realign, report.

        Example: emkit run recipes/smoke.yaml --dry-run
        """
        from emkit.pipeline import load_recipe, run_pipeline
        from emkit.pipeline.recipe_io import RECIPES_DIR

        r = load_recipe(recipe)
        p = Path(recipe)
        text = None
        for cand in (p, Path("recipes") / f"{recipe}.yaml", RECIPES_DIR / f"{recipe}.yaml"):
            if cand.is_file():
                text = cand.read_text(encoding="utf-8")
                break
        path = run_pipeline(r, only=only, start=start, dry_run=dry_run, out=out_dir, recipe_text=text, wait=wait)
        if not dry_run:
            say(out, f"report: {path / 'report' / 'index.html'}")

    @app.command("report")
    def report_cmd(
        run_dir: Path = typer.Argument(..., help="A run folder written by `emkit run`."),
        shot: bool = typer.Option(False, "--screenshot", help="Also save report/screenshot.png (needs Chromium)."),
    ) -> None:
        """Render RUN/report/index.html again from the run's stored stage results (no model needed).

        Example: emkit report runs/smoke
        """
        from emkit.errors import EmkitError
        from emkit.report import write_report

        if not (run_dir / "pipeline").is_dir():
            raise EmkitError(f"{run_dir} holds no pipeline results", hint="run `emkit run RECIPE` first")
        from emkit.pipeline.recipe import STAGE_NAMES
        from emkit.pipeline.runner import read_result
        from emkit.run import lock_run, read_manifest

        lock_run(run_dir)  # not while an `emkit run` writes there
        read_manifest(run_dir / "manifest.json")  # a corrupt file is named, with what to do
        for stage in STAGE_NAMES:
            read_result(run_dir, stage)
        path = write_report(run_dir)
        say(out, f"report: {path}")
        if shot:
            from emkit.report.browser import screenshot

            say(out, f"screenshot: {screenshot(path, path.parent / 'screenshot.png', height=2400)}")
