"""How far to trust a trained judge: agreement on groups of answers it was not fitted on.

:func:`leave_one_group_out` fits the heads on every group but one (a model family, a source file)
and scores the one left out; :func:`k_fold_by_question` does the same within one group, folding by
question so that no question is on both sides. The summaries go into the judge's card and are printed
by ``emkit judge validate``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from emkit.judge.embedded import Head, head_scores
from emkit.judge.validate import agreement
from emkit.metrics import answer_status

Fit = Callable[[np.ndarray, list[dict]], dict[str, Head]]
KEEP = ("n", "n_auroc_aligned", "auroc_aligned", "auroc_coherent", "spearman_aligned", "misaligned_recall",
        "misaligned_precision", "incoherent_called_misaligned", "n_incoherent")


def summary(rows: Sequence[dict], scores: dict[str, np.ndarray]) -> dict:
    """The card's agreement figures of scores (``aligned``/``coherent`` arrays) with labelled rows."""
    preds = [{"aligned": float(scores["aligned"][i]), "coherent": float(scores["coherent"][i])}
             for i in range(len(rows))]
    res = agreement(rows, preds)
    out = {k: res.get(k) for k in KEEP}
    out["n_misaligned"] = sum(answer_status(r["aligned"], r["coherent"]) == "misaligned" for r in rows)
    return out


def leave_one_group_out(x: np.ndarray, rows: Sequence[dict], fit: Fit, key: str = "family",
                        always_train: Sequence[int] = (), groups: Sequence[str] | None = None) -> dict[str, dict]:
    """Per group: agreement of heads fitted without it (rows ``always_train`` are always in training)."""
    keys = np.array([str(r.get(key)) for r in rows])
    extra = np.zeros(len(rows), bool)
    extra[list(always_train)] = True
    out = {}
    for g in groups or sorted(set(keys[~extra])):
        test = (keys == g) & ~extra
        train = ~test
        heads = fit(x[train], [rows[i] for i in np.flatnonzero(train)])
        idx = np.flatnonzero(test)
        out[g] = summary([rows[i] for i in idx], head_scores(heads, x[idx]))
    return out


def k_fold_by_question(x: np.ndarray, rows: Sequence[dict], fit: Fit, within: np.ndarray, k: int = 5,
                       seed: int = 0) -> dict:
    """Agreement on the rows ``within`` (bool mask), each scored by heads fitted without its question fold.

    All rows outside ``within`` are always in training.
    """
    idx = np.flatnonzero(within)
    questions = sorted({rows[i]["question"] for i in idx})
    random.Random(seed).shuffle(questions)
    fold = {q: n % k for n, q in enumerate(questions)}
    ali, coh = np.zeros(len(rows)), np.zeros(len(rows))
    for f in range(k):
        test = np.array([within[i] and fold[rows[i]["question"]] == f for i in range(len(rows))])
        if not test.any():
            continue
        heads = fit(x[~test], [rows[i] for i in np.flatnonzero(~test)])
        s = head_scores(heads, x[test])
        ali[test], coh[test] = s["aligned"], s["coherent"]
    return summary([rows[i] for i in idx], {"aligned": ali[idx], "coherent": coh[idx]})


def worst(table: dict[str, dict], stat: str = "auroc_aligned") -> float | None:
    """The lowest value of ``stat`` over groups that have it (None when none has)."""
    vals = [v[stat] for v in table.values() if v.get(stat) is not None]
    return min(vals) if vals else None
