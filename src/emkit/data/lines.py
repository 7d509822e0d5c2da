"""Reading text from data files safely: UTF-8 decoded line by line, with a cap on a line's length.

A line that is not UTF-8 is named by file, line and byte offset; a line longer than
``$EMKIT_MAX_LINE_BYTES`` (default 16 MiB) is refused before it is held in memory, so a small zip
holding one enormous line cannot exhaust memory.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

from emkit.errors import EmkitError

MAX_LINE_ENV = "EMKIT_MAX_LINE_BYTES"
DEFAULT_MAX_LINE = 16 << 20


class BadSink(Protocol):
    """Where a skippable bad line goes (:class:`emkit.data.formats.BadRows`): raise, or count it."""

    def add(self, err: EmkitError) -> None: ...


def max_line_bytes() -> int:
    """The longest line read from a data file, in bytes (``$EMKIT_MAX_LINE_BYTES``, default 16 MiB)."""
    raw = os.environ.get(MAX_LINE_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_LINE
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise EmkitError(f"${MAX_LINE_ENV} must be a positive number of bytes, got {raw!r}")
    return value


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n} bytes"


def text_lines(raw: IO[bytes], source: str, bad: BadSink | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of a binary stream, decoded as UTF-8 one line at a time.

    A line longer than :func:`max_line_bytes` raises before it is read whole. A line that is not
    UTF-8 raises, naming the line and the byte offset in the file; with ``bad`` it is handed to
    ``bad.add`` (skipped and counted under ``skip_bad``).
    """
    cap = max_line_bytes()
    offset = 0
    for n in itertools.count(1):
        b = raw.readline(cap + 1)
        if not b:
            return
        if len(b) > cap and not (len(b) == cap + 1 and b.endswith(b"\n")):
            raise EmkitError(f"{source}:{n}: line is longer than {_size(cap)}",
                             hint=f"a data row this long is likely a broken file; raise ${MAX_LINE_ENV} to read it")
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError as e:
            err = EmkitError(f"{source}:{n}: not valid UTF-8 (byte 0x{b[e.start]:02x} at byte offset "
                             f"{offset + e.start})", hint="save the file as UTF-8")
            offset += len(b)
            if bad is None:
                raise err from None
            bad.add(err)
            continue
        offset += len(b)
        yield n, (text[1:] if n == 1 and text.startswith("\ufeff") else text)


def read_text_checked(path: str | Path) -> str:
    """A whole text file (YAML, JSON, CSV, .py) as UTF-8; bad bytes are named by line and byte offset."""
    p = Path(path)
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise EmkitError(f"{p}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start})",
                         hint="save the file as UTF-8") from None


def read_json_list(path: Path, what: str) -> list:
    """A JSON file holding a list (of ``what``); invalid JSON or another type is a one-line error."""
    try:
        data = json.loads(read_text_checked(path))
    except json.JSONDecodeError as e:
        raise EmkitError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise EmkitError(f"{path}: expected a JSON list of {what}")
    return data
