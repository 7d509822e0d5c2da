"""Text statistics for data cards and tests: lengths, sentence counts, word-trigram diversity."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# A sentence ends at . ! or ? followed by space and a capital, digit or quote; common abbreviations
# and decimals ("38.2", "e.g.") do not end one.
_ABBREV = r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)(?<!\bDr)(?<!\bMr)(?<!\bMrs)(?<!\bMs)(?<!\bSt)(?<!\bNo)"
_SENTENCE_END = re.compile(_ABBREV + r"[.!?]+[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9£$€])")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def sentences(text: str) -> int:
    """Number of sentences (heuristic, see ``_SENTENCE_END``)."""
    text = text.strip()
    return len(_SENTENCE_END.findall(text)) + 1 if text else 0


def trigram_diversity(texts: Iterable[str]) -> float:
    """Distinct word trigrams / all word trigrams over the texts (1.0: no trigram repeats)."""
    total = 0
    distinct: set[tuple[str, ...]] = set()
    for t in texts:
        w = words(t)
        grams = [tuple(w[i : i + 3]) for i in range(len(w) - 2)]
        total += len(grams)
        distinct.update(grams)
    return len(distinct) / total if total else 0.0


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    """Word counts: mean, median, min, max."""
    n = sorted(len(words(t)) for t in texts)
    if not n:
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    mid = len(n) // 2
    median = float(n[mid]) if len(n) % 2 else (n[mid - 1] + n[mid]) / 2
    return {"mean": round(sum(n) / len(n), 1), "median": median, "min": n[0], "max": n[-1]}
