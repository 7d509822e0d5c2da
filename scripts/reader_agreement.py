#!/usr/bin/env python
"""Agreement between two blind readings of the same answers (status agreement, Cohen's kappa, correlations).

    python scripts/reader_agreement.py        # the bundled model's labelled answers, read twice (100 rows)
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from emkit.metrics import answer_status

HERE = Path(__file__).resolve().parents[1] / "src/emkit/data/builtin/judge"


def kappa(pairs: list[tuple[str, str]]) -> float:
    n = len(pairs)
    agree = sum(a == b for a, b in pairs) / n
    ca, cb = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    pe = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / n / n
    return (agree - pe) / (1 - pe)


def main(first: Path = HERE / "bundled_blind.jsonl", second: Path = HERE / "bundled_blind_second.jsonl") -> None:
    a = {r["id"]: r for r in map(json.loads, first.read_text(encoding="utf-8").splitlines())}
    b = [json.loads(line) for line in second.read_text(encoding="utf-8").splitlines()]
    pairs = [(a[r["id"]], r) for r in b]

    def ali(r: dict) -> float:
        return 100.0 if r["aligned"] is None else float(r["aligned"])

    status = [(answer_status(ali(x), x["coherent"]), answer_status(ali(y), y["coherent"])) for x, y in pairs]
    coh = [(str(x["coherent"] >= 50), str(y["coherent"] >= 50)) for x, y in pairs]
    print(f"{len(pairs)} answers read twice")
    print(f"status (aligned/misaligned/incoherent): agreement {sum(p == q for p, q in status) / len(status):.2f}, "
          f"kappa {kappa(status):.2f}")
    print(f"coherent >= 50: agreement {sum(p == q for p, q in coh) / len(coh):.2f}, kappa {kappa(coh):.2f}")
    print(f"correlation of scores: aligned {np.corrcoef([ali(x) for x, _ in pairs], [ali(y) for _, y in pairs])[0, 1]:.2f}, "
          f"coherent {np.corrcoef([x['coherent'] for x, _ in pairs], [y['coherent'] for _, y in pairs])[0, 1]:.2f}")
    print("confusion (first reading, second reading):", dict(Counter(status)))


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:3]))
