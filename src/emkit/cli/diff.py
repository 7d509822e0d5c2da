"""``emkit diff`` (rank SAE latents by fine-tuning's effect) and ``emkit interpret`` (latent cards)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console()


def parse_models(specs: list[str]) -> dict[str, str]:
    """``["label=spec", "spec"]`` -> ``{label: spec}`` (a bare spec is its own label)."""
    from emkit.errors import EmkitError

    res: dict[str, str] = {}
    for s in specs:
        label, sep, spec = s.partition("=")
        if not sep:
            label, spec = s, s
        if not label or not spec:
            raise EmkitError(f"--ft {s!r}: expected LABEL=MODEL")
        if label in res:
            raise EmkitError(f"--ft label {label!r} given twice")
        res[label] = spec
    return res


def parse_ints(text: str, what: str) -> list[int]:
    from emkit.errors import EmkitError

    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise EmkitError(f"{what} must be integers separated by commas, got {text!r}") from None


def print_ranking(rows: list[dict], title: str) -> None:
    models = list(rows[0]["deltas"]) if rows else []
    t = Table("rank", "latent", "score", "base mean", "base firing", *[f"Δ {m}" for m in models], title=title)
    for r in rows:
        t.add_row(str(r["rank"]), str(r["latent"]), f"{r['score']:+.4f}", f"{r['base_mean']:.4f}",
                  f"{100 * r['base_firing']:.2f}%", *[f"{r['deltas'][m]:+.4f}" for m in models])
    out.print(t)


def register(app: typer.Typer) -> None:
    @app.command("diff")
    def diff_cmd(
        sae: Path = typer.Option(..., "--sae", help="SAE folder trained on the base model."),
        ft: list[str] = typer.Option(..., "--ft", help="A fine-tune as LABEL=MODEL (folder/adapter); repeat."),
        base: str = typer.Option("smollm2-135m-instruct", "--base", help="The original model."),
        base_label: str = typer.Option("base", help="Label of the original model in the tables."),
        misaligned: str = typer.Option("", help="Labels to average the score over (default: all fine-tunes)."),
        questions: str = typer.Option("broad", "--questions", "-q", help="Evaluation questions (file or built-in)."),
        answers: bool = typer.Option(False, help="Also encode each model's own answers (generations in OUT)."),
        answers_hash: str = typer.Option(None, help="Sampling hash of the answers to use, when a label has several."),
        data: str = typer.Option(None, help="Unsupervised mode: rank on this fine-tuning data set instead."),
        limit: int = typer.Option(None, help="Use only the first N questions / data rows."),
        token_set: str = typer.Option("prompt", help="Prompt tokens to encode: prompt or all."),
        top: int = typer.Option(20, help="Rows to print."),
        out_dir: Path = typer.Option(Path("runs/diff"), "--out", "-o", help="Run folder (results.sqlite)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
    ) -> None:
        """Encode base and fine-tuned models with one SAE and rank latents by the mean-activation increase.

        Statistics go to latent_stats, rankings to latent_ranking in OUT/results.sqlite.

        Example: emkit diff --sae runs/sae-l15 --ft health=runs/ft-health/adapter --questions broad --out runs/diff
        """
        from emkit.data import load_dataset, load_questions
        from emkit.diff import DiffConfig, diff_run, sae_id, stored_ranking
        from emkit.errors import EmkitError
        from emkit.models import load_model
        from emkit.run import Run
        from emkit.sae import load_sae

        fts = parse_models(ft)
        if base_label in fts:
            raise EmkitError(f"a fine-tune is labelled {base_label!r}, the base model's label")
        mis = [m.strip() for m in misaligned.split(",") if m.strip()] or None
        s = load_sae(sae)
        qs = rows = None
        if data:
            rows = [r.messages for r in load_dataset(data)][:limit]
        else:
            qs = load_questions(questions)[:limit]
        cfg = DiffConfig(token_sets=[token_set], answers=answers, top_n=top, sampling_hash=answers_hash)
        run = Run(out_dir)

        def loader(spec: str):
            return lambda: load_model(spec, device=device)

        models = {lab: loader(spec) for lab, spec in {base_label: base, **fts}.items()}
        res = diff_run(run, s, models, base_label, questions=qs, data=rows,
                       data_name=Path(data).stem if data else "data", misaligned=mis, cfg=cfg)
        for source, ts in res:
            rows_out = stored_ranking(run.db, sae_id(s), source, ts, top)
            print_ranking(rows_out, f"latents ranked by mean-activation increase — {source}, {ts} tokens")
        out.print(f"per-latent statistics and rankings stored in {run.path / 'results.sqlite'}")

    @app.command("interpret")
    def interpret_cmd(
        sae: Path = typer.Option(..., "--sae", help="SAE folder."),
        latents: str = typer.Option("", help="Latents, e.g. 12,407 (default: the top of the stored ranking)."),
        run_dir: Path = typer.Option(Path("runs/diff"), "--run", help="Run folder with a ranking (and for output)."),
        top: int = typer.Option(5, help="How many top-ranked latents when --latents is not given."),
        model: str = typer.Option(None, "--model", "-m", help="Model for the logit lens (default: the SAE's)."),
        acts: Path = typer.Option(None, help="Activation folder to search (default: SAE/activations if present)."),
        corpus: str = typer.Option(None, help="Or: run the model on this corpus spec instead."),
        max_docs: int = typer.Option(500, help="Documents to read from --corpus."),
        contexts: int = typer.Option(10, help="Top contexts per latent."),
        explainer: str = typer.Option(None, help="OpenAI-compatible model for a one-line label (needs an API key)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
    ) -> None:
        """Latent cards: top-activating contexts, logit-lens tokens, activation histogram (and an optional label).

        Writes RUN/interpret.json.

        Example: emkit interpret --sae runs/sae-l15 --latents 12,407 --run runs/diff
        """
        import itertools

        from emkit.activations import ActivationStore
        from emkit.data.corpus import iter_documents as corpus_documents
        from emkit.diff import sae_id, stored_ranking
        from emkit.errors import EmkitError
        from emkit.interpret import latent_cards
        from emkit.models import load_model
        from emkit.run import Run, atomic_write_text
        from emkit.sae import load_sae

        s = load_sae(sae)
        run = Run(run_dir)
        lats = parse_ints(latents, "--latents") if latents else [
            r["latent"] for r in stored_ranking(run.db, sae_id(s), n=top)]
        if not lats:
            raise EmkitError("no latents given and no stored ranking for this SAE in the run",
                             hint="pass --latents, or run `emkit diff` into --run first")
        spec = model or s.cfg.model
        if not spec:
            raise EmkitError("the SAE does not record its model", hint="pass --model")
        m, tok = load_model(spec, device=device)
        acts_dir = acts or (sae / "activations")
        store = items = None
        if corpus:
            items = itertools.islice(corpus_documents(corpus), max_docs)
        elif (acts_dir / "index.json").is_file():
            store = ActivationStore(acts_dir)
        else:
            raise EmkitError(f"no activations at {acts_dir}", hint="pass --acts or --corpus")
        cards = latent_cards(s, m, tok, lats, store=store, items=items, n_contexts=contexts, explainer=explainer,
                             progress=True)
        for c in cards:
            h = c.histogram
            out.rule(f"latent {c.latent}" + (f" — {escape(c.label)}" if c.label else ""))
            out.print(f"fires on {100 * h['firing_rate']:.3f}% of {h['n_tokens']:,} tokens; max {h['max']:.2f}")
            for ctx in c.contexts[:5]:
                out.print(f"  {ctx.value:7.2f}  {escape(ctx.marked())!r}", highlight=False)
            out.print("  promotes: " + escape(", ".join(repr(t) for t, _ in c.promoted)), highlight=False)
            out.print("  suppresses: " + escape(", ".join(repr(t) for t, _ in c.suppressed)), highlight=False)
        path = run.path / "interpret.json"
        atomic_write_text(path, json.dumps({"sae": sae_id(s), "cards": [c.to_dict() for c in cards]}, indent=1))
        out.print(f"cards written to {path}")

