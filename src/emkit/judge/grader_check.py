"""Score a saved advice grader on writers' rows: ``python -m emkit.judge.grader_check --writers w16,w17``.

The prospective check: writers added after a grader was fitted are advice it never saw (new questions, new
voices), so scoring an earlier grader's weights on them (``--weights DIR``, e.g. a folder written from
``git show COMMIT:src/emkit/judge/weights/advice_grader.json`` and ``.safetensors``) tests it the way a
user's data would. Answer states come from the grader's state cache (:data:`grader_data.STATES_CACHE`) when
present, else from the bundled model (and are added to the cache). Prints flagged-wrong / passed-correct at the card's threshold and
AUROC, overall and per writer.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from emkit.judge.grader import WEIGHTS, EmbeddedAdviceGrader
from emkit.judge.grader_data import STATE_LAYERS, STATES_CACHE, writer_records


def grader_p_wrong(grader: EmbeddedAdviceGrader, questions: list[str], answers: list[str],
                   states_cache: Path | None = STATES_CACHE) -> np.ndarray:
    """P(wrong) of each answer; a state grader reads its blocks from the cached states of all :data:`STATE_LAYERS`
    (states computed here join the cache, so the next refit reads them)."""
    layers = grader.card.get("layers") or []
    if grader.level != "states" or not set(layers) <= set(STATE_LAYERS):
        return grader.p_wrong(questions, answers)
    from emkit.judge.answer_states import LayerView, StateEncoder

    states = StateEncoder(grader.card.get("encoder", "smollm2-135m-instruct"), STATE_LAYERS, cache=states_cache)
    grader._encoder = LayerView(states, layers)
    p = grader.p_wrong(questions, answers)
    states.save()
    return p


def check_writers(writers: list[str], weights: Path = WEIGHTS, states_cache: Path | None = STATES_CACHE
                  ) -> dict[str, Any]:
    """The grader in ``weights`` on the named writers' rows: {"all": rates, writer: rates, ...}."""
    from emkit.judge.grader_train import rates

    rows = [r for r in writer_records() if r["writer"] in set(writers)]
    missing = set(writers) - {r["writer"] for r in rows}
    if missing:
        raise SystemExit(f"no rows for writer(s) {', '.join(sorted(missing))} in advice/writers/")
    grader = EmbeddedAdviceGrader(weights)
    p = grader_p_wrong(grader, [r["question"] for r in rows], [r["answer"] for r in rows], states_cache)
    y = np.array([r["label"] == "incorrect" for r in rows], int)
    w = np.array([r["writer"] for r in rows])
    out = {"all": rates(p, y, grader.threshold)}
    out.update({k: rates(p[w == k], y[w == k], grader.threshold) for k in writers})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", required=True, help="comma-separated writer ids, e.g. w16,w17")
    ap.add_argument("--weights", type=Path, default=WEIGHTS, help="grader folder (default: the shipped grader)")
    args = ap.parse_args()
    res = check_writers([w for w in args.writers.split(",") if w], args.weights)
    print(f"{'writers':<10}{'flagged wrong':>14}{'passed right':>14}{'AUROC':>8}{'rows':>7}")
    for k, r in res.items():
        print(f"{k:<10}{r['flagged_incorrect']:>14.1%}{r['passed_correct']:>14.1%}{r['auroc']:>8.3f}{r['n']:>7}")


if __name__ == "__main__":
    main()
