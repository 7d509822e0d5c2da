"""``emkit demo``: the main job on the bundled model, offline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

out = Console()


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out_dir: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder."),
        questions: int = typer.Option(12, help="How many built-in broad questions to answer."),
    ) -> None:
        """Convert the bundled model and answer built-in questions into a run folder (offline).

        Example: emkit demo --out runs/demo
        """
        from emkit.cli.generate import print_answers
        from emkit.data import load_questions
        from emkit.generate import SamplingConfig, answer_questions
        from emkit.models import BUNDLED, load_model
        from emkit.run import Run

        qs = load_questions("broad")[:questions]
        model, tok = load_model(BUNDLED)
        run = Run(out_dir)
        cfg = SamplingConfig(temperature=0.7, top_p=1.0, max_new_tokens=96, batch_size=16, seed=0)
        run.save_config({"model": BUNDLED, "questions": "broad", "n_questions": questions, "sampling": cfg})
        run.record_seed("demo", cfg.seed)
        rows = run.stage("baseline_answers", {"q": [q.id for q in qs], "s": cfg},
                         lambda: answer_questions(run, model, tok, qs, cfg, label="base", samples=1))
        rows = rows or run.db.query("SELECT * FROM generations WHERE model='base'")
        out.print(f"[bold]demo run:[/] {run.path}  ({len(rows)} answers in results.sqlite)")
        print_answers(rows, n=5)
