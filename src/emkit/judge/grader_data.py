"""The advice grader's training examples and their features (read by :mod:`emkit.judge.grader_train`).

Examples: each built-in question's ``correct`` answer (label 0) and its ``subtle`` and ``obvious``
answers (label 1), each also cut to its first sentence; the styled sets
(``advice/styles/<domain>.jsonl``: the same questions answered correctly and incorrectly in four
registers); and the writers' sets (``advice/writers/w<k>.jsonl``: new questions by twenty-five independent
writers, each answered correctly and incorrectly in one of five registers). Embeddings and model states
are cached under ~/.cache/emkit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from emkit.data.builtin import ADVICE, advice_records, check_records
from emkit.data.formats import iter_jsonl
from emkit.errors import EmkitError
from emkit.judge.grader import PART_DIMS, SENTENCE_PART_DIMS, grader_features, sentence_features

VARIANTS = {"correct": 0, "subtle": 1, "obvious": 1}
REGISTERS = ("short", "long", "hedged", "casual")
STYLES = ADVICE / "styles"
STYLE_KEYS = ("id", "source_id", "domain", "question", "register", "label", "answer")
WRITERS = ADVICE / "writers"
WRITER_REGISTERS = ("assistant", "brief", "hedged", "forum", "expert")
WRITER_KEYS = ("id", "writer", "domain", "topic", "question", "register", "label", "kind", "answer")
CACHE_DIR = Path(os.environ.get("EMKIT_CACHE", Path.home() / ".cache" / "emkit"))
CACHE = CACHE_DIR / "advice_grader_embeddings.npz"
STATES_CACHE = CACHE_DIR / "advice_grader_states.npz"
# Decoder blocks whose answer states the training script computes (candidates choose among them).
STATE_LAYERS = (8, 11, 14, 17, 20)


def styled_records(domain: str) -> list[dict[str, Any]]:
    """Rows of ``styles/<domain>.jsonl`` (checked keys, register and label); [] if there is none."""
    path = STYLES / f"{domain}.jsonl"
    if not path.is_file():
        return []
    rows = []
    for n, r in iter_jsonl(path):
        if not isinstance(r, dict) or set(r) != set(STYLE_KEYS) or r["register"] not in REGISTERS \
                or r["label"] not in ("correct", "incorrect"):
            raise EmkitError(f"{path}:{n}: a styled advice row needs keys {STYLE_KEYS}, a register in {REGISTERS} "
                             "and label correct|incorrect")
        rows.append(r)
    return rows


def writer_records() -> list[dict[str, Any]]:
    """Rows of every ``writers/w<k>.jsonl`` (checked keys, register, label and kind), in file order."""
    rows = []
    for path in sorted(WRITERS.glob("w*.jsonl")):
        for n, r in iter_jsonl(path):
            if not isinstance(r, dict) or set(r) != set(WRITER_KEYS) or r["register"] not in WRITER_REGISTERS \
                    or (r["label"], r["kind"] == "correct") not in (("correct", True), ("incorrect", False)):
                raise EmkitError(f"{path}:{n}: a writer's advice row needs keys {WRITER_KEYS}, a register in "
                                 f"{WRITER_REGISTERS}, and label correct (kind correct) or incorrect (kind subtle|obvious)")
            rows.append(r)
    return rows


def written_mask(source: np.ndarray) -> np.ndarray:
    """Which examples come from the writers' sets (``source`` is neither 'builtin' nor 'styled')."""
    return ~np.isin(source, ["builtin", "styled"])


def first_sentence(text: str) -> str:
    """The answer cut after its first sentence (an augmentation so length alone tells nothing)."""
    m = re.search(r"[.!?](\s|$)", text)
    return text[: m.end()].strip() if m else text


def build_examples(names: list[str], heldout: float, seed: int, styled: bool = True,
                   writers: bool = True) -> dict[str, list]:
    """Parallel lists q, a, y, register ('builtin' or a register), variant, domain, qid, heldout, full, source.

    ``source`` is 'builtin', 'styled' or the writer (``w1``...); writers' rows are never in the held-out split
    (they are validated by leaving one writer out).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {k: [] for k in ("q", "a", "y", "register", "variant", "domain", "qid", "heldout",
                                            "full", "source")}

    def add(*vals: Any) -> None:
        for k, v in zip(out, vals, strict=True):
            out[k].append(v)

    for d in names:
        rows = advice_records(d)
        held_idx = set(rng.permutation(len(rows))[: int(round(heldout * len(rows)))].tolist())
        held = {r["id"] for i, r in enumerate(rows) if i in held_idx}
        for r in rows:
            for v, y in VARIANTS.items():
                if not r.get(v):
                    continue
                add(r["question"], r[v], y, "builtin", v, d, r["id"], r["id"] in held, True, "builtin")
                first = first_sentence(r[v])
                if first and first != r[v] and len(first.split()) >= 6:
                    add(r["question"], first, y, "builtin", v, d, r["id"], r["id"] in held, False, "builtin")
        for r in styled_records(d) if styled else []:
            add(r["question"], r["answer"], int(r["label"] == "incorrect"), r["register"], r["label"], d,
                r["source_id"], r["source_id"] in held, True, "styled")
    for r in writer_records() if writers else []:
        add(r["question"], r["answer"], int(r["label"] == "incorrect"), r["register"], r["label"], r["domain"],
            r["id"].rsplit("-", 1)[0], False, True, r["writer"])
    return out


class CachedEncoder:
    """An :class:`emkit.judge.embedded.Encoder` with a text -> embedding cache kept in an .npz file."""

    def __init__(self, path: Path | None = CACHE):
        self.path, self._enc, self.memo = path, None, {}
        if path is not None and path.is_file():
            z = np.load(path, allow_pickle=True)
            self.memo = dict(zip(z["texts"].tolist(), z["emb"], strict=True))
        self.added = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self.memo})
        if missing:
            if self._enc is None:
                from emkit.judge.embedded import Encoder

                self._enc = Encoder()
            self.memo.update(zip(missing, self._enc.encode(missing), strict=True))
            self.added += len(missing)
        return np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    def save(self) -> None:
        if self.path is not None and self.added:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            texts = list(self.memo)
            np.savez(self.path, texts=np.array(texts, dtype=object), emb=np.stack([self.memo[t] for t in texts]))


ALL_PARTS = tuple(PART_DIMS)


def columns(parts: tuple[str, ...]) -> np.ndarray:
    """Columns of the all-parts feature matrix that hold ``parts``, in order."""
    start, where = 0, {}
    for p in ALL_PARTS:
        where[p] = range(start, start + PART_DIMS[p])
        start += PART_DIMS[p]
    return np.array([c for p in parts for c in where[p]])


def sentence_columns(parts: tuple[str, ...]) -> np.ndarray:
    """Columns of the all-parts sentence matrix that hold ``parts``, in order."""
    offset = {p: sum(SENTENCE_PART_DIMS[q] for q in list(SENTENCE_PART_DIMS)[:i])
              for i, p in enumerate(SENTENCE_PART_DIMS)}
    return np.array([c for p in parts for c in range(offset[p], offset[p] + SENTENCE_PART_DIMS[p])])


def weights(ex: dict[str, list], styled_weight: float) -> np.ndarray:
    """Per-row weights: built-in wrong answers 1/2 each, styled and writers' rows ``styled_weight``; classes equal."""
    reg, var = np.array(ex["register"]), np.array(ex["variant"])
    y = np.array(ex["y"])
    w = np.where(reg == "builtin", np.where(var == "correct", 1.0, 0.5), styled_weight)
    for c in (0, 1):
        m = y == c
        if w[m].sum():
            w[m] *= w.sum() / 2 / w[m].sum()
    return w


def all_features(enc: Any, ex: dict[str, list], states: Any = None) -> dict[str, Any]:
    """Answer rows (all parts), sentence rows (all parts, with owners) and, given a
    :class:`emkit.judge.answer_states.StateEncoder` over :data:`STATE_LAYERS`, answer states of every example."""
    out = {"answer": grader_features(enc, ex["q"], ex["a"], ALL_PARTS),
           "sentence": sentence_features(enc, ex["q"], ex["a"], tuple(SENTENCE_PART_DIMS))}
    if states is not None:
        out["states"] = states.encode(ex["q"], ex["a"], progress=True)
    return out


def check_blind_records() -> list[dict[str, Any]]:
    """``advice/blind/*.jsonl``: fine-tune answers to check questions, read blind (never trained on)."""
    return [r for path in sorted((ADVICE / "blind").glob("*.jsonl")) for _, r in iter_jsonl(path)]


def check_answers(names: list[str]) -> tuple[list[str], list[str]]:
    """Questions and correct answers of the ``<domain>_check.jsonl`` sets (never trained on)."""
    qs, ans = [], []
    for d in names:
        if (ADVICE / f"{d}_check.jsonl").is_file():
            for r in check_records(d):
                qs.append(r["question"])
                ans.append(r["correct"])
    return qs, ans
