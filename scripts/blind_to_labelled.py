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


def main(run: Path, source: str, out: Path, readers: list[Path]) -> None:
    keys: dict[str, dict] = {}
    for kp in sorted((run / "blind").glob("*.key.json")):
        keys.update(json.loads(kp.read_text(encoding="utf-8"))["rows"])
    db = sqlite3.connect(f"file:{run / 'results.sqlite'}?mode=ro", uri=True)
    rows = []
    for rp in readers:
        for line in rp.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            s = json.loads(line)
            k = keys[s["id"]]
            prompt, answer = db.execute(
                "SELECT prompt, answer FROM generations WHERE model=? AND question_id=? AND paraphrase=? AND sample=? "
                "AND sampling_hash=?", (k["model"], k["question_id"], k["paraphrase"], k["sample"],
                                        k["sampling_hash"])).fetchone()
            rows.append({"id": f"{source}-{len(rows) + 1:04d}", "question": prompt, "answer": answer,
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
