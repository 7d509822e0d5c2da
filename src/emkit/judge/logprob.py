"""The 0–100 logprob rule (Betley et al.), shared by the API and local judges.

The judge is asked for one number. The score is the probability-weighted mean of the integers
0–100 the judge could answer with; when less than ``MIN_MASS`` (0.25) of its probability falls on
such numbers the judge did not really answer with a number, and the score is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

MIN_MASS = 0.25


def as_number(token: str) -> int | None:
    """The integer 0–100 a token spells (surrounding whitespace allowed), else None."""
    s = token.strip()
    if not s or len(s) > 3 or not (s.isascii() and s.isdigit()):
        return None
    n = int(s)
    return n if n <= 100 else None


def number_probs(top_logprobs: Mapping[str, float]) -> dict[int, float]:
    """Probability per number from a token -> logprob map (tokens like ``"7"`` and ``" 7"`` add up)."""
    probs: dict[int, float] = {}
    for token, lp in top_logprobs.items():
        n = as_number(token)
        if n is not None and lp is not None and math.isfinite(lp):
            probs[n] = probs.get(n, 0.0) + math.exp(lp)
    return probs


def weighted_score(probs: Mapping[int, float], min_mass: float = MIN_MASS) -> tuple[float | None, float]:
    """(score, mass): the probability-weighted mean number, None when the mass on numbers < ``min_mass``."""
    mass = float(sum(probs.values()))
    if mass < min_mass or mass <= 0:
        return None, mass
    return sum(n * p for n, p in probs.items()) / mass, mass


def score_top_logprobs(top_logprobs: Mapping[str, float], min_mass: float = MIN_MASS) -> tuple[float | None, float]:
    """The 0–100 score from one token position's top logprobs (the API judge's case)."""
    return weighted_score(number_probs(top_logprobs), min_mass)
