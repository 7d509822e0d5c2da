"""Readers for the standard public formats, with errors that name the file and the line.

- chat JSONL: ``{"messages": [{"role", "content"}, ...]}`` per line (Betley et al., most SFT sets);
  ``{"question", "answer"}`` and ``{"prompt", "completion"}`` rows are read as one user/assistant turn;
- the OpenAI persona-features release: zips of such JSONL, read by :mod:`emkit.data.zips`; its
  content is nested as ``{"content_type": "text", "parts": [...]}``, with ``metadata`` and a
  ``canary`` on each row (the canary stays in the metadata of every row derived from it);
- CSV files whose quoted cells may span several lines;
- grader prompts kept as string constants in ``.py`` files, read with :mod:`ast`, never executed.

Bad rows raise :class:`EmkitError`; with ``skip_bad=True`` they are skipped, counted, and reported
in one :class:`DataWarning` per file. Nothing is dropped silently. Text is decoded line by line
(:mod:`emkit.data.lines`): a line that is not UTF-8 is a bad row named by file, line and byte
offset, and a line longer than ``$EMKIT_MAX_LINE_BYTES`` (default 16 MiB) is refused unread.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from emkit.data.lines import read_text_checked, text_lines
from emkit.data.schema import ROLES, ChatRow
from emkit.errors import EmkitError


class DataWarning(UserWarning):
    """Rows were skipped (``skip_bad=True``); the message gives the count and the first problems."""


class BadRows:
    """Raise on the first bad row, or (``skip_bad``) count bad rows and warn once in :meth:`finish`."""

    def __init__(self, source: str, skip_bad: bool = False):
        self.source = source
        self.skip_bad = skip_bad
        self.problems: list[str] = []

    def add(self, err: EmkitError) -> None:
        if not self.skip_bad:
            raise err
        self.problems.append(str(err))

    def finish(self, total: int | None = None) -> None:
        if not self.problems:
            return
        of = f" of {total}" if total is not None else ""
        first = "; ".join(self.problems[:3]) + (" ..." if len(self.problems) > 3 else "")
        warnings.warn(
            f"{self.source}: skipped {len(self.problems)}{of} bad rows (first: {first})", DataWarning, stacklevel=3
        )


# ---------------------------------------------------------------- rows


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; invalid JSON names file and line."""
    p = Path(path)
    with p.open("rb") as f:
        for n, line in text_lines(f, str(p)):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise EmkitError(f"{p}:{n}: invalid JSON ({e.msg})") from None


def content_text(content: Any, where: str) -> str:
    """Plain text of a message's content: a string, OpenAI's ``{"content_type", "parts"}``, or text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and "parts" in content:
        ctype = content.get("content_type", "text")
        if ctype != "text":
            raise EmkitError(f"{where}: content_type {ctype!r} is not supported", hint="only text content is read")
        parts = content["parts"]
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise EmkitError(f"{where}: 'parts' must be a list of strings")
        return "\n".join(parts)
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    raise EmkitError(f"{where}: cannot read message content of type {type(content).__name__}")


def record_to_row(rec: Any, where: str) -> ChatRow:
    """One JSON record -> a validated :class:`ChatRow`; keys other than the messages go to metadata."""
    if not isinstance(rec, dict):
        raise EmkitError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    meta: dict[str, Any] = {}
    if isinstance(rec.get("metadata"), dict):
        meta.update(rec["metadata"])
    if "messages" in rec:
        raw = rec["messages"]
        if not isinstance(raw, list):
            raise EmkitError(f"{where}: 'messages' must be a list")
        messages = []
        extras: dict[str, dict[str, Any]] = {}
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise EmkitError(f"{where}: message {i} needs 'role' and 'content'")
            if m["role"] not in ROLES:
                raise EmkitError(f"{where}: message {i} has unknown role {m['role']!r}", hint=f"use one of {ROLES}")
            messages.append({"role": m["role"], "content": content_text(m["content"], f"{where}: message {i}")})
            rest = {k: v for k, v in m.items() if k not in ("role", "content")}
            if rest:
                extras[str(i)] = rest
        if extras:
            meta["message_extras"] = extras
        used = {"messages", "metadata"}
    else:
        pair = next(((q, a) for q, a in (("question", "answer"), ("prompt", "completion")) if q in rec and a in rec), None)
        if pair is None:
            raise EmkitError(f"{where}: no 'messages'", hint="chat rows need 'messages' (or 'question' and 'answer')")
        q, a = pair
        if not isinstance(rec[q], str) or not isinstance(rec[a], str):
            raise EmkitError(f"{where}: '{q}' and '{a}' must be strings")
        messages = [{"role": "user", "content": rec[q]}, {"role": "assistant", "content": rec[a]}]
        used = {q, a, "metadata"}
    meta.update({k: v for k, v in rec.items() if k not in used})
    return ChatRow(messages, meta).validate(where)


def rows_from_lines(lines: Iterable[str] | IO[bytes], source: str, skip_bad: bool = False) -> list[ChatRow]:
    """Chat rows from JSONL lines (text, or a binary stream read with :func:`text_lines`);
    a malformed line is reported as ``source:line``."""
    bad = BadRows(source, skip_bad)
    rows: list[ChatRow] = []
    seen = 0
    numbered = text_lines(lines, source, bad) if hasattr(lines, "readline") else enumerate(lines, 1)
    for n, line in numbered:
        if not line.strip():
            continue
        seen += 1
        where = f"{source}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            bad.add(EmkitError(f"{where}: invalid JSON ({e.msg} at column {e.colno})"))
            continue
        try:
            rows.append(record_to_row(rec, where))
        except EmkitError as e:
            bad.add(e)
    if seen == 0:
        raise EmkitError(f"{source}: no rows")
    bad.finish(seen)
    return rows


def read_chat_jsonl(path: str | Path, skip_bad: bool = False) -> list[ChatRow]:
    """Read a chat JSONL file (see the module docstring for the row shapes)."""
    p = Path(path)
    if not p.is_file():
        raise EmkitError(f"no such file: {p}")
    with p.open("rb") as f:
        return rows_from_lines(f, str(p), skip_bad)


def write_jsonl(rows: Iterable[ChatRow | dict[str, Any]], path: str | Path) -> int:
    """Write rows as JSONL atomically (temp file then rename); returns the number of rows."""
    p = Path(path)
    if p.is_dir():
        raise EmkitError(f"{p} is a folder, not a file to write", hint=f"give a file name, e.g. {p / 'rows.jsonl'}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                rec = r.to_record() if isinstance(r, ChatRow) else r
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


# ---------------------------------------------------------------- CSV and grader prompts


_ID_LIKE = re.compile(r"[A-Za-z0-9_][\w.:-]{0,63}")


def _merged_rows(cell: str, width: int) -> int:
    """How many lines inside a multi-line cell look like whole CSV rows (a sign of an unbalanced quote)."""
    if "\n" not in cell or width < 2:
        return 0
    n = 0
    for line in cell.split("\n")[1:]:
        fields = next(csv.reader([line]), [])
        if len(fields) == width and _ID_LIKE.fullmatch(fields[0].strip() or "-"):
            n += 1
    return n


def read_csv_records(path: str | Path) -> list[tuple[str, dict[str, str]]]:
    """``(where, row)`` pairs of a CSV with a header; quoted cells may span lines; unnamed columns dropped.

    Rows with more or fewer cells than the header are refused, and so is a quoted cell whose lines
    look like rows of their own (an unbalanced quote that would merge several rows into one).
    """
    p = Path(path)
    reader = csv.DictReader(io.StringIO(read_text_checked(p), newline=""))
    if not reader.fieldnames:
        raise EmkitError(f"{p}: the CSV has no header row")
    width = len(reader.fieldnames)
    out = []
    start = 2
    try:
        for row in reader:
            if None in row:
                raise EmkitError(f"{p}:{start}: more cells than header columns",
                                 hint="check for an unquoted comma or an unbalanced quote")
            if any(v is None for v in row.values()):
                raise EmkitError(f"{p}:{start}: fewer cells than header columns",
                                 hint="check for an unbalanced quote or a missing comma")
            for k, v in row.items():
                merged = _merged_rows(v, width)
                if merged:
                    raise EmkitError(f"{p}:{start}: the quoted cell {k!r} runs over {merged} line(s) that look like "
                                     "rows of their own", hint=f"an unbalanced quote near line {start}? "
                                     f"{len(out)} rows were read before it")
            rec = {k: v for k, v in row.items() if k and not k.startswith("Unnamed:")}
            if any(v and v.strip() for v in rec.values()):
                out.append((f"{p}:{start}", rec))
            start = reader.line_num + 1
    except csv.Error as e:
        raise EmkitError(f"{p}:{reader.line_num}: CSV error ({e})") from None
    return out


def _literal_strings(name: str, node: ast.AST) -> dict[str, str]:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = _literal_strings(name, node.left), _literal_strings(name, node.right)
            if left.get(name) is not None and right.get(name) is not None:
                return {name: left[name] + right[name]}
        return {}
    if isinstance(value, str):
        return {name: value}
    if isinstance(value, dict):
        return {f"{name}[{k}]": v for k, v in value.items() if isinstance(v, str)}
    return {}


def read_grader_prompts(path: str | Path) -> dict[str, str]:
    """Module-level string constants of a ``.py`` file (e.g. the release's ``grader_prompts.py``).

    The file is parsed with :mod:`ast` and never imported or run. Dict constants of strings appear
    as ``NAME[key]``.
    """
    p = Path(path)
    try:
        tree = ast.parse(read_text_checked(p), filename=str(p))
    except SyntaxError as e:
        raise EmkitError(f"{p}:{e.lineno}: not valid Python ({e.msg})") from None
    out: dict[str, str] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for t in targets:
            if isinstance(t, ast.Name):
                out.update(_literal_strings(t.id, value))
    if not out:
        raise EmkitError(f"{p}: no string constants found", hint="grader prompts are module-level NAME = '...' strings")
    return out

