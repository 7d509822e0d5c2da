"""Mixtures of correct and incorrect data with exact counts, and train/held-out splits by seed.

Rows are matched by question (:attr:`ChatRow.key`, the normalised user text), so for parallel sets
(the same questions with correct and incorrect answers) a question appears at most once in a
mixture, with one of its two answers. For a fixed ``n`` and ``seed`` the mixtures of a series
(0%, 5%, 25%, ...) use the same questions, and the wrong rows of a smaller fraction are a subset of
those of a larger one: only the answers change between the members of a series.
"""

from __future__ import annotations

import copy
import random
import warnings
from collections.abc import Sequence
from pathlib import Path

from emkit.data.formats import DataWarning
from emkit.data.schema import ChatRow
from emkit.errors import EmkitError


def _rows(data: Sequence[ChatRow] | str | Path) -> list[ChatRow]:
    if isinstance(data, str | Path):
        from emkit.data.dataset import load_dataset

        return load_dataset(data)
    return list(data)


def by_question(rows: Sequence[ChatRow], label: str = "rows") -> dict[str, ChatRow]:
    """First row per question key; repeats are counted in a warning, not silently merged."""
    out: dict[str, ChatRow] = {}
    repeats = 0
    for r in rows:
        if r.key in out:
            repeats += 1
        else:
            out[r.key] = r
    if repeats:
        warnings.warn(f"{label}: {repeats} rows repeat a question; one row per question is used", DataWarning,
                      stacklevel=3)
    return out


def _tagged(row: ChatRow, label: str) -> ChatRow:
    return ChatRow(copy.deepcopy(row.messages), {**copy.deepcopy(row.metadata), "mix_label": label})


def n_wrong(fraction: float, n: int) -> int:
    """The exact number of incorrect rows in a mixture of ``n`` (``round(fraction * n)``)."""
    return int(round(fraction * n))


def _plan(keys_c: set[str], keys_i: set[str], fraction: float, n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    shared = sorted(keys_c & keys_i)
    rng.shuffle(shared)
    only_i, only_c = sorted(keys_i - keys_c), sorted(keys_c - keys_i)
    rng.shuffle(only_i)
    rng.shuffle(only_c)
    k = n_wrong(fraction, n)
    wrong = (only_i + shared)[:k]
    chosen = set(wrong)
    right = (only_c + [q for q in shared if q not in chosen])[: n - k]
    return wrong, right


def max_n(correct: Sequence[ChatRow], incorrect: Sequence[ChatRow], fraction: float) -> int:
    """The largest mixture size possible at ``fraction`` with each question used once."""
    keys_c, keys_i = set(by_question(correct)), set(by_question(incorrect))
    n = len(keys_c | keys_i)
    while n > 0:
        wrong, right = _plan(keys_c, keys_i, fraction, n, 0)
        if len(wrong) == n_wrong(fraction, n) and len(right) == n - len(wrong):
            return n
        n -= 1
    return 0


def mix(
    correct: Sequence[ChatRow] | str | Path,
    incorrect: Sequence[ChatRow] | str | Path,
    fraction: float,
    n: int | None = None,
    seed: int = 0,
) -> list[ChatRow]:
    """``n`` rows of which exactly ``round(fraction * n)`` come from ``incorrect``, in shuffled order.

    ``correct`` / ``incorrect`` are rows or data set names/paths. Each question appears once. ``n``
    defaults to the largest size possible. Rows are copies, tagged ``metadata["mix_label"]`` =
    ``"correct"`` or ``"incorrect"``.
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise EmkitError(f"mixture fraction {fraction} is outside [0, 1]")
    rows_c, rows_i = _rows(correct), _rows(incorrect)
    map_c, map_i = by_question(rows_c, "correct set"), by_question(rows_i, "incorrect set")
    same = [k for k in set(map_c) & set(map_i) if map_c[k].answer == map_i[k].answer]
    if same:
        raise EmkitError(f"{len(same)} question(s) have the same answer in the correct and the incorrect set "
                         f"(e.g. {same[0][:60]!r})", hint="the same data was given as both; check --correct/--incorrect")
    if n is None:
        n = max_n(rows_c, rows_i, fraction)
    if n < 1:
        raise EmkitError(f"mixture size must be at least 1 (got {n})")
    wrong, right = _plan(set(map_c), set(map_i), fraction, n, seed)
    need = n_wrong(fraction, n)
    if len(wrong) < need or len(right) < n - need:
        raise EmkitError(
            f"cannot build {n} rows with {need} incorrect: {len(map_i)} incorrect and {len(map_c)} correct "
            f"questions ({len(set(map_c) & set(map_i))} shared) allow at most {max_n(rows_c, rows_i, fraction)}",
            hint="lower n",
        )
    out = [_tagged(map_i[k], "incorrect") for k in wrong] + [_tagged(map_c[k], "correct") for k in right]
    random.Random(seed + 1).shuffle(out)
    return out


def split(
    rows: Sequence[ChatRow], heldout: float | int = 0.1, seed: int = 0
) -> tuple[list[ChatRow], list[ChatRow]]:
    """``(train, heldout)`` by question: rows sharing a question never land in both parts.

    ``heldout`` is a fraction of the distinct questions (rounded, at least 1 when > 0) or, as an
    int >= 1, their exact number. Order within each part follows the input.
    """
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.key, []).append(i)
    keys = sorted(groups)
    if isinstance(heldout, bool) or heldout < 0:
        raise EmkitError(f"heldout must be a fraction in [0, 1) or a count, got {heldout!r}")
    if isinstance(heldout, float):
        if heldout >= 1:
            raise EmkitError(f"heldout fraction {heldout} must be below 1")
        k = int(round(heldout * len(keys)))
        if heldout > 0:
            k = max(k, 1)
    else:
        k = int(heldout)
    if k >= len(keys) and k > 0:
        raise EmkitError(f"cannot hold out {k} of {len(keys)} distinct questions")
    rng = random.Random(seed)
    rng.shuffle(keys)
    held = {i for key in keys[:k] for i in groups[key]}
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
