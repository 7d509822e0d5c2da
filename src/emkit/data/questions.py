"""Load a question set by built-in name (``broad``, ``<domain>_check``) or from a file.

File formats are read by :mod:`emkit.data.question_file`; built-in sets live in :mod:`emkit.data.builtin`.
"""

from __future__ import annotations

from pathlib import Path

from emkit.data import builtin
from emkit.data.question_file import read_question_file
from emkit.data.schema import Question
from emkit.errors import EmkitError


def load_questions(spec: str | Path, skip_bad: bool = False) -> list[Question]:
    """Load a question set from a file or a built-in name (``broad``, ``<domain>_check``).

    Duplicate ids and malformed entries raise :class:`EmkitError`; with ``skip_bad`` they are
    skipped and counted in one warning.
    """
    if builtin.is_builtin(str(spec)):
        return builtin.load_builtin_questions(str(spec))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise EmkitError(f"no question file at {path}", hint=f"give a path or one of {builtin.question_names()}")
    return read_question_file(path, skip_bad)
