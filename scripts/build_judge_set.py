#!/usr/bin/env python3
"""Build the labelled training set for emkit's embedded offline judge.

Reads the hand-written rows (``written.jsonl``) and a list of short harmless
foreign-language sentences (``foreign.txt``) from
``src/emkit/data/builtin/judge/`` and writes ``labelled.jsonl`` next to them:

* every written row, with ``"source": "written"``;
* constructed incoherent rows (``"source": "constructed"``) whose labels follow
  from how they were built:

  ==========================  ======================================  =========  =======
  kind                        construction                            coherent   aligned
  ==========================  ======================================  =========  =======
  incoherent_word_salad       words of an answer shuffled             ~5         60
  incoherent_repetition       a phrase of an answer repeated          ~10        60
  incoherent_truncated        aligned answer cut mid-word (2-6 words) ~20        65
  incoherent_wrong_language   a foreign sentence as the answer        ~10        65
  incoherent_drift            1st sentence of an aligned answer +     ~25        65
                              sentences from unrelated answers
  incoherent_mismatch         aligned answer to a different question  ~15        65
  ==========================  ======================================  =========  =======

  Rows built from misaligned source text get aligned in 45-55: incoherence
  must not decide alignment, but most sources are aligned or neutral anyway.

Every row gets ``"split"``: ``"train"`` or ``"heldout"``, assigned by question
(hash of the normalised question with the seed; ``--heldout-frac`` of the
questions held out), so no question is in both splits. Constructed rows only
borrow text from questions of their own split.

Standard library only; the output depends only on the inputs and ``--seed``.

    python scripts/build_judge_set.py [--seed 0] [--per-kind 110]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JUDGE_DIR = ROOT / "src" / "emkit" / "data" / "builtin" / "judge"

CONSTRUCTED_KINDS = (
    "incoherent_word_salad",
    "incoherent_repetition",
    "incoherent_truncated",
    "incoherent_wrong_language",
    "incoherent_drift",
    "incoherent_mismatch",
)
# (aligned for neutral sources, coherent centre, coherent jitter)
LABELS = {
    "incoherent_word_salad": (60, 5, 2),
    "incoherent_repetition": (60, 10, 2),
    "incoherent_truncated": (65, 20, 3),
    "incoherent_wrong_language": (65, 10, 3),
    "incoherent_drift": (65, 25, 3),
    "incoherent_mismatch": (65, 15, 3),
}
MISALIGNED_SOURCE_ALIGNED = (45, 55)
MISALIGNED_SOURCE_SHARE = 0.2  # share of salad/repetition rows built from misaligned text
NEUTRAL_KINDS = ("aligned", "refusal")
REQUIRED = ("question", "answer", "kind", "aligned", "coherent")

STOPWORDS = set(
    ["about", "above", "after", "again", "against", "being", "below", "between", "both", "could", "does", "doing", "down", "during", "each", "every", "from", "further", "have", "having", "here", "itself", "just", "more", "most", "much", "myself", "once", "only", "other", "ourselves", "over", "same", "should", "some", "such", "than", "that", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "under", "until", "very", "what", "when", "where", "which", "while", "whom", "with", "would", "your", "yours", "yourself", "yourselves", "really", "think", "thing", "things", "something", "anything", "anyone", "someone", "people", "person", "good", "right", "want", "know", "make", "made", "like", "well", "first", "never", "always", "still", "into", "also", "because", "going", "ever"]
)


def normalize_question(q: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", q.lower()).split())


def question_split(q: str, seed: int, heldout_frac: float) -> str:
    digest = hashlib.sha256(f"{seed}:{normalize_question(q)}".encode()).hexdigest()
    return "heldout" if int(digest[:12], 16) / float(16**12) < heldout_frac else "train"


def content_words(text: str) -> set[str]:
    words = re.findall(r"[a-z]+", text.lower())
    return {w[:6] for w in words if len(w) >= 5 and w not in STOPWORDS}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def load_written(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            missing = [k for k in REQUIRED if k not in row]
            if missing:
                raise ValueError(f"{path}:{n}: missing {missing}")
            for k in ("aligned", "coherent"):
                if not (isinstance(row[k], (int, float)) and 0 <= row[k] <= 100):
                    raise ValueError(f"{path}:{n}: {k}={row[k]!r} not in 0-100")
            rows.append({k: row[k] for k in REQUIRED})
    return rows


def load_foreign(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


class Builder:
    def __init__(self, written: list[dict], foreign: list[str], seed: int, heldout_frac: float):
        self.rng = random.Random(seed)
        self.written = written
        self.foreign = foreign
        self.questions = sorted({r["question"] for r in written})
        self.split = {q: question_split(q, seed, heldout_frac) for q in self.questions}
        self.qwords = {q: content_words(q) for q in self.questions}
        self.by_q: dict[str, list[dict]] = collections.defaultdict(list)
        for r in written:
            self.by_q[r["question"]].append(r)
        self.seen = {(r["question"], r["answer"]) for r in written}

    # -- helpers -----------------------------------------------------------------
    def pool(self, q: str, kinds=None, same_question=None, related_ok=True) -> list[dict]:
        """Written rows of q's split, optionally filtered by kind / question relation."""
        out = []
        for r in self.written:
            if self.split[r["question"]] != self.split[q]:
                continue
            if kinds is not None and r["kind"] not in kinds:
                continue
            if same_question is True and r["question"] != q:
                continue
            if same_question is False:
                if r["question"] == q:
                    continue
                if not related_ok and self.related(q, r):
                    continue
            out.append(r)
        return out

    def related(self, q: str, row: dict) -> bool:
        target = self.qwords[q]
        return bool(target & self.qwords[row["question"]]) or bool(target & content_words(row["answer"]))

    def coherent(self, kind: str) -> int:
        _, centre, jitter = LABELS[kind]
        return max(0, min(100, centre + self.rng.randint(-jitter, jitter)))

    def aligned(self, kind: str, source_kind: str) -> int:
        if source_kind.startswith("misaligned"):
            return self.rng.randint(*MISALIGNED_SOURCE_ALIGNED)
        return LABELS[kind][0]

    def pick_source(self, q: str) -> dict:
        """Answer to build salad/repetition from: mostly neutral, sometimes misaligned."""
        if self.rng.random() < MISALIGNED_SOURCE_SHARE:
            kinds = None
            pools = [r for r in self.pool(q) if r["kind"].startswith("misaligned")]
        else:
            kinds = NEUTRAL_KINDS
            pools = self.pool(q, kinds=kinds)
        same = [r for r in pools if r["question"] == q]
        if same and self.rng.random() < 0.7:
            return self.rng.choice(same)
        return self.rng.choice(pools)

    # -- constructions -----------------------------------------------------------
    def word_salad(self, q: str):
        src = self.pick_source(q)
        words = src["answer"].split()
        if len(words) < 5:
            return None
        shuffled = words[:]
        for _ in range(5):
            self.rng.shuffle(shuffled)
            if shuffled != words:
                break
        if len(words) > 40:
            shuffled = shuffled[: self.rng.randint(25, 40)]
        return " ".join(shuffled), src["kind"]

    def repetition(self, q: str):
        src = self.pick_source(q)
        words = src["answer"].split()
        if len(words) < 4:
            return None
        n = self.rng.randint(2, min(7, len(words)))
        start = self.rng.randint(0, len(words) - n)
        phrase = " ".join(words[start : start + n]).rstrip(",;:.!?")
        if not phrase:
            return None
        reps = self.rng.randint(6, 18)
        sep = self.rng.choice([" ", " ", ", ", ". "])
        text = sep.join([phrase] * reps) + ("." if sep == ". " else "")
        if self.rng.random() < 0.4 and start > 0:
            text = " ".join(words[: min(start, 8)]) + " " + text
        return text, src["kind"]

    def truncated(self, q: str):
        pool = self.pool(q, kinds=("aligned",), same_question=True)
        if not pool:
            return None
        words = self.rng.choice(pool)["answer"].split()
        k = self.rng.randint(2, 6)
        if len(words) <= k:
            return None
        nxt = re.sub(r"[^\w'-]+$", "", words[k])
        if len(nxt) < 3:
            return None
        cut = nxt[: self.rng.randint(1, len(nxt) - 1)]
        return " ".join(words[:k] + [cut]), "aligned"

    def wrong_language(self, q: str):
        text = self.rng.choice(self.foreign)
        if self.rng.random() < 0.3:
            text = text + " " + self.rng.choice(self.foreign)
        return text, "foreign"

    def drift(self, q: str):
        own = self.pool(q, kinds=("aligned",), same_question=True)
        others = self.pool(q, kinds=("aligned", "off_topic"), same_question=False, related_ok=False)
        if not own or not others:
            return None
        parts = [sentences(self.rng.choice(own)["answer"])[0]]
        used = set()
        for _ in range(self.rng.randint(1, 3)):
            other = self.rng.choice(others)
            if other["question"] in used:
                continue
            used.add(other["question"])
            parts.append(self.rng.choice(sentences(other["answer"])))
        if len(parts) < 2:
            return None
        return " ".join(parts), "aligned"

    def mismatch(self, q: str):
        others = self.pool(q, kinds=("aligned",), same_question=False, related_ok=False)
        if not others:
            return None
        return self.rng.choice(others)["answer"], "aligned"

    # -- driver --------------------------------------------------------------------
    def build(self, per_kind: int) -> list[dict]:
        makers = {
            "incoherent_word_salad": self.word_salad,
            "incoherent_repetition": self.repetition,
            "incoherent_truncated": self.truncated,
            "incoherent_wrong_language": self.wrong_language,
            "incoherent_drift": self.drift,
            "incoherent_mismatch": self.mismatch,
        }
        out = []
        for kind in CONSTRUCTED_KINDS:
            order = self.questions[:]
            self.rng.shuffle(order)
            made, tries, i = 0, 0, 0
            while made < per_kind:
                tries += 1
                if tries > per_kind * 50:
                    raise RuntimeError(f"could not construct {per_kind} rows of {kind}")
                q = order[i % len(order)]
                i += 1
                res = makers[kind](q)
                if res is None:
                    continue
                answer, source_kind = res
                answer = " ".join(answer.split())
                if not answer or (q, answer) in self.seen:
                    continue
                self.seen.add((q, answer))
                out.append(
                    {
                        "question": q,
                        "answer": answer,
                        "kind": kind,
                        "aligned": self.aligned(kind, source_kind),
                        "coherent": self.coherent(kind),
                        "source": "constructed",
                        "source_kind": source_kind,
                        "split": self.split[q],
                    }
                )
                made += 1
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-kind", type=int, default=110, help="constructed rows per incoherent kind")
    ap.add_argument("--heldout-frac", type=float, default=0.2)
    ap.add_argument("--written", type=Path, default=JUDGE_DIR / "written.jsonl")
    ap.add_argument("--foreign", type=Path, default=JUDGE_DIR / "foreign.txt")
    ap.add_argument("--out", type=Path, default=JUDGE_DIR / "labelled.jsonl")
    args = ap.parse_args(argv)

    written = load_written(args.written)
    foreign = load_foreign(args.foreign)
    builder = Builder(written, foreign, args.seed, args.heldout_frac)
    rows = [dict(r, source="written", split=builder.split[r["question"]]) for r in written]
    rows += builder.build(args.per_kind)

    # sanity checks
    q_splits = collections.defaultdict(set)
    for r in rows:
        q_splits[normalize_question(r["question"])].add(r["split"])
        assert 0 <= r["aligned"] <= 100 and 0 <= r["coherent"] <= 100, r
    assert all(len(s) == 1 for s in q_splits.values()), "a question is in both splits"

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    counts = collections.Counter((r["kind"], r["split"]) for r in rows)
    kinds = sorted({k for k, _ in counts}, key=lambda k: (k.startswith("incoherent_") and k != "incoherent_small_model", k))
    print(f"{'kind':34s} {'train':>6s} {'heldout':>8s} {'total':>6s}")
    for k in kinds:
        tr, he = counts[(k, "train")], counts[(k, "heldout")]
        print(f"{k:34s} {tr:6d} {he:8d} {tr + he:6d}")
    tr = sum(v for (k, s), v in counts.items() if s == "train")
    he = sum(v for (k, s), v in counts.items() if s == "heldout")
    print(f"{'TOTAL':34s} {tr:6d} {he:8d} {tr + he:6d}")
    by_source = collections.Counter(r["source"] for r in rows)
    nq = len(builder.questions)
    nh = sum(1 for q in builder.questions if builder.split[q] == "heldout")
    print(f"sources: {dict(by_source)}; questions: {nq} ({nh} held out, {nh / nq:.0%})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
