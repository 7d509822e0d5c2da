"""``load_dataset``: chat rows from any supported file or a built-in name."""

from __future__ import annotations

import json
from pathlib import Path

from emkit.data import builtin
from emkit.data.formats import BadRows, read_chat_jsonl, record_to_row
from emkit.data.lines import read_json_list, text_lines
from emkit.data.schema import ChatRow
from emkit.data.zips import read_zip
from emkit.errors import EmkitError

QUESTION_SUFFIXES = (".yaml", ".yml", ".csv")


def load_dataset(
    spec: str | Path, skip_bad: bool = False, password: str | bytes | None = None
) -> list[ChatRow]:
    """Chat rows from a built-in name, a chat ``.jsonl``, a ``.json`` list, or a release ``.zip``.

    ``archive.zip!entry.jsonl`` reads one entry of a zip. ``password`` (zips only) falls back to
    ``$EMKIT_ZIP_PASSWORD``. Bad rows raise :class:`EmkitError` naming file and line; with
    ``skip_bad`` they are skipped and counted in a :class:`~emkit.data.formats.DataWarning`.
    """
    s = str(spec)
    kind = builtin.kind_of(s)
    if kind == "chat":
        return builtin.load_builtin(s)
    if kind is not None:
        raise EmkitError(f"{s!r} is a built-in {kind} set, not chat training data", hint="use it as --questions")
    member = None
    if "!" in s and not Path(s).exists():
        s, member = s.split("!", 1)
    path = Path(s).expanduser()
    if not path.exists():
        raise EmkitError(f"no data set named or at {s!r}", hint=f"give a file or one of {builtin.names('chat')}")
    if path.is_dir():
        raise EmkitError(f"{path} is a folder", hint="give a .jsonl or .zip file")
    suffix = path.suffix.lower()
    if suffix == ".zip":
        rows = read_zip(path, password=password, skip_bad=skip_bad, member=member)
    elif suffix == ".jsonl":
        rows = read_chat_jsonl(path, skip_bad=skip_bad)
    elif suffix == ".json":
        rows = _read_json_list(path, skip_bad)
    elif suffix in QUESTION_SUFFIXES:
        raise EmkitError(f"{path} looks like a question file, not chat data", hint="load it with load_questions")
    else:
        raise EmkitError(f"{path}: unknown data file type {suffix!r}", hint="use .jsonl, .json or .zip")
    if not rows:
        raise EmkitError(f"{path}: no usable rows")
    return rows


def _read_json_list(path: Path, skip_bad: bool) -> list[ChatRow]:
    data = read_json_list(path, "rows")
    bad = BadRows(str(path), skip_bad)
    rows = []
    for i, rec in enumerate(data):
        try:
            rows.append(record_to_row(rec, f"{path} item {i + 1}"))
        except EmkitError as e:
            bad.add(e)
    bad.finish(len(data))
    return rows


def sniff(spec: str | Path) -> str:
    """What a file or built-in name holds: ``chat``, ``questions``, ``advice`` (parallel answers),
    ``judge`` (labelled judge rows) or ``grader_prompts`` (a ``.py`` of prompt constants)."""
    kind = builtin.kind_of(str(spec))
    if kind is not None:
        return kind
    s = str(spec)
    if "!" in s and not Path(s).exists():
        s = s.split("!", 1)[0]
    path = Path(s).expanduser()
    if not path.is_file():
        raise EmkitError(f"no data set named or at {s!r}", hint=f"give a file or one of {builtin.names()}")
    suffix = path.suffix.lower()
    if suffix in (".zip", ".json"):
        return "chat"
    if suffix in QUESTION_SUFFIXES:
        return "questions"
    if suffix == ".py":
        return "grader_prompts"
    if suffix != ".jsonl":
        raise EmkitError(f"{path}: unknown data file type {suffix!r}", hint="use .jsonl, .json, .zip, .yaml or .csv")
    with path.open("rb") as f:  # line by line: bad bytes and over-long lines are named, not crashed on
        first = next((line for _, line in text_lines(f, str(path)) if line.strip()), "")
    try:
        rec = json.loads(first) if first else {}
    except json.JSONDecodeError as e:
        raise EmkitError(f"{path}: first row is not valid JSON ({e.msg})") from None
    keys = set(rec) if isinstance(rec, dict) else set()
    if {"correct", "subtle", "obvious"} <= keys:
        return "advice"
    if {"answer", "aligned", "coherent"} <= keys:
        return "judge"
    if "messages" in keys or {"question", "answer"} <= keys or {"prompt", "completion"} <= keys:
        return "chat"
    if "paraphrases" in keys or {"id", "question"} <= keys:
        return "questions"
    return "chat"
