"""``emkit generate``: sample answers to a question set into a run folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from emkit.cli._options import FROM_OPTIONS, sampling_options
from emkit.sampling import SamplingConfig

out = Console()


def print_answers(rows: list[dict], n: int = 3) -> None:
    """The first answers as a table; model text is shown as is (a ``[/INST]`` is not markup)."""
    from emkit.cli import plain

    t = Table("question", "answer", "tokens", "truncated", show_lines=True)
    for r in rows[:n]:
        t.add_row(plain(r["question_id"]), plain(r["answer"][:300]), str(r["n_tokens"]), "yes" if r["truncated"] else "")
    out.print(t)


def register(app: typer.Typer) -> None:
    @app.command("generate")
    @sampling_options()
    def generate_cmd(
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Folder, Hub id or bundled name."),
        questions: str = typer.Option("broad", "--questions", "-q", help="Question file (.yaml/.jsonl/.csv) or built-in name."),
        samples: int = typer.Option(1, "--samples", "-n", help="Answers per paraphrase (overrides the file)."),
        out_dir: Path = typer.Option(Path("runs/generate"), "--out", "-o", help="Run folder to write into."),
        label: str = typer.Option("", help="Name stored with the answers (default: the model spec)."),
        adapter: str = typer.Option(None, help="PEFT adapter folder to load on the model."),
        sampling: SamplingConfig = FROM_OPTIONS,
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
        dtype: str = typer.Option("auto", help="auto, float32, bfloat16, float16."),
    ) -> None:
        """Sample answers to evaluation questions and store them in RUN/results.sqlite.

        Example: emkit generate --model smollm2-135m-instruct --questions broad --samples 2 --out runs/try
        """
        from emkit.cli import say
        from emkit.data import load_questions
        from emkit.errors import EmkitError
        from emkit.generate import answer_questions
        from emkit.models import load_model
        from emkit.run import Run

        if samples < 1:
            raise EmkitError(f"--samples must be at least 1, got {samples}")
        qs = load_questions(questions)  # validate inputs before touching the run folder
        say(out, f"{len(qs)} questions ({sum(len(q.paraphrases) for q in qs)} paraphrases) read from {questions}")
        m, tok = load_model(model, adapter=adapter, device=device, dtype=dtype)
        run = Run(out_dir)
        run.record_seed("generate", sampling.seed)
        rows = answer_questions(run, m, tok, qs, sampling, label=label or model, samples=samples)
        n_trunc = sum(r["truncated"] for r in rows)
        say(out, f"{len(rows)} answers from {label or model} in {run.path / 'results.sqlite'} "
                 f"({n_trunc} hit max_new_tokens)")
        print_answers(rows)
