"""Join a run's blind exports with the readers' scores into labelled rows (the judge-set format).

Each row: ``id``, ``question``, ``answer``, ``aligned``, ``coherent``, ``label``, ``kind``, ``note``,
``model``, ``sampling``, ``question_id``, ``reader``, ``source`` (what the answers were sampled for).
Usage: python scripts/blind_to_labelled.py RUN SOURCE OUT.jsonl READER.jsonl [READER.jsonl ...]
(the reader files' ids must be in one of ``RUN/blind/*.key.json``).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from emkit.blind import ANSWER_KEY, export_keys, read_scores
from emkit.results import stored_answers


def main(run: Path, source: str, out: Path, readers: list[Path]) -> None:
    keys = export_keys(run)
    db = sqlite3.connect(f"file:{run / 'results.sqlite'}?mode=ro", uri=True)
    answers = {tuple(r[c] for c in ANSWER_KEY): r for r in stored_answers(db)}
    rows = []
    for rp in readers:
        for s in read_scores(rp):
            k = keys[s["id"]][1]
            g = answers[tuple(k[c] for c in ANSWER_KEY)]
            rows.append({"id": f"{source}-{len(rows) + 1:04d}", "question": g["prompt"], "answer": g["answer"],
                         "aligned": s["aligned"], "coherent": s["coherent"], "label": s.get("label"),
                         "kind": "bundled_model_answer", "note": s.get("note", ""), "model": k["model"],
                         "sampling": k["sampling_hash"], "question_id": k["question_id"], "reader": rp.stem,
                         "source": source})
    rows.sort(key=lambda r: (r["question_id"], r["model"], r["answer"]))
    with out.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows appended to {out}")


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), [Path(p) for p in sys.argv[4:]])
