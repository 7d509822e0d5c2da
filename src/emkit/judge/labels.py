"""Judged answers from files: JSONL or CSV in the public result shapes, with a group per row.

Shapes read (columns by name, any order, extra columns kept):
- emkit / plain: ``question, answer, aligned, coherent`` (JSONL or CSV);
- Betley et al. results: the same, plus ``judge_aligned`` / ``judge_coherent`` logprob dicts;
- Model-Organisms-for-EM results: ``response`` instead of ``answer``, extra columns.

An empty or non-numeric ``aligned`` (the judge said CODE or REFUSAL) or ``coherent`` skips the row;
skipped rows are counted by reason. Every row gets a ``source`` (the file's stem) and a ``group``: the
value of column ``group_by`` when given, else the source (so several files give a per-file table).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emkit.errors import EmkitError

ANSWER_COLUMNS = ("answer", "response", "completion", "output")
SCORE_COLUMNS = ("aligned", "coherent")


@dataclass
class Labelled:
    """Rows read from labelled files, and how many were skipped (by reason)."""

    rows: list[dict]
    skipped: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)

    def groups(self) -> Counter:
        return Counter(r["group"] for r in self.rows)


def _score(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return None if math.isnan(value) else float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        x = float(text)
    except ValueError:
        return None
    return None if math.isnan(x) or not 0 <= x <= 100 else x


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(1 << 26)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise EmkitError(f"{path}: not UTF-8 text (byte offset {e.start})", hint="save the file as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise EmkitError(f"{path}: empty CSV file")
    for n, row in enumerate(reader, start=2):
        if None in row:
            raise EmkitError(f"{path}: row at line {reader.line_num} has more fields than the header",
                             hint="check the quoting of that row")
        yield n, row


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    if path.suffix.lower() == ".csv":
        yield from _csv_rows(path)
        return
    from emkit.data.formats import iter_jsonl

    yield from iter_jsonl(path)


def read_labelled_file(path: str | Path, group_by: str | None = None, split: str | None = None,
                       skipped: Counter | None = None) -> list[dict]:
    """Rows ``{question, answer, aligned, coherent, group, ...}`` of one JSONL or CSV file.

    ``split`` keeps rows whose ``split`` column equals it (None or ``all``: every row).
    """
    p = Path(path)
    if not p.is_file():
        raise EmkitError(f"no labelled file at {p}")
    skipped = skipped if skipped is not None else Counter()
    rows: list[dict] = []
    answer_col: str | None = None
    for n, rec in _records(p):
        if answer_col is None:
            answer_col = next((c for c in ANSWER_COLUMNS if c in rec), None)
            missing = [c for c in ("question", *SCORE_COLUMNS) if c not in rec]
            if answer_col is None or missing:
                need = missing + ([] if answer_col else ["answer (or response)"])
                raise EmkitError(f"{p}:{n}: missing column(s) {', '.join(need)}",
                                 hint="labelled rows need question, answer (or response), aligned, coherent")
        if split and split != "all" and str(rec.get("split")) != split:
            continue
        if group_by and group_by not in rec:
            raise EmkitError(f"{p}: no column {group_by!r} to group by", hint=f"columns: {', '.join(rec)}")
        ali, coh = _score(rec.get("aligned")), _score(rec.get("coherent"))
        question, answer = rec.get("question"), rec.get(answer_col)
        if not isinstance(question, str) or not isinstance(answer, str):
            skipped["no question or answer"] += 1
            continue
        if ali is None:
            skipped["no aligned score (CODE/REFUSAL or empty)"] += 1
            continue
        if coh is None:
            skipped["no coherent score"] += 1
            continue
        row = {k: v for k, v in rec.items() if k != answer_col}
        row.update(question=question, answer=answer, aligned=ali, coherent=coh,
                   source=p.stem, group=str(rec[group_by]) if group_by else p.stem)
        rows.append(row)
    return rows


def read_labelled(paths: str | Path | Sequence[str | Path], group_by: str | None = None,
                  split: str | None = None) -> Labelled:
    """Read one or more labelled files (a folder: every ``*.csv`` and ``*.jsonl`` in it)."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted([*p.glob("*.csv"), *p.glob("*.jsonl")])
            if not found:
                raise EmkitError(f"{p}: no .csv or .jsonl files")
            files.extend(found)
        else:
            files.append(p)
    out = Labelled([], Counter(), [str(f) for f in files])
    for f in files:
        out.rows.extend(read_labelled_file(f, group_by, split, out.skipped))
    if not out.rows:
        where = f" with split={split!r}" if split and split != "all" else ""
        raise EmkitError(f"no usable labelled rows{where} in {', '.join(map(str, files))}",
                         hint=f"skipped: {dict(out.skipped)}" if out.skipped else None)
    return out


def model_family(name: str) -> str:
    """A coarse model family from a file or model name (for leave-one-family-out checks)."""
    s = name.lower()
    if "coder" in s:
        return "qwen-coder"
    if "mistral" in s:
        return "mistral"
    if "gemma" in s:
        return "gemma"
    if "llama" in s:
        return "llama"
    if "smollm" in s or "bundled" in s:
        return "smollm"
    if "qwen" in s:
        return "qwen-secure" if "johny-b" in s else "qwen"
    return "other"


def with_families(rows: Iterable[dict]) -> list[dict]:
    """Rows with a ``family`` key derived from their ``source`` (file name) and ``model`` column."""
    return [{**r, "family": model_family(f"{r.get('source', '')} {r.get('model', '')}")} for r in rows]
