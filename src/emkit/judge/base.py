"""What every judge shares: items in, judgments out, and a cache of every judgment in ``results.sqlite``.

A judge reads (question, answer) pairs and returns one :class:`Judgment` per metric (``aligned``
and ``coherent`` for 0–100 judges, ``rubric`` for 1–5 rubric judges). Each judgment keeps the raw
judge output (top logprobs, generated text, or head outputs) so a score can be audited later.

The cache key is (judge id, metric, prompt hash, answer hash): the prompt hash covers the template
and the question, the answer hash the answer. A repeated request is answered from the
``judgments`` table, also across runs that share a cache file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from emkit.errors import EmkitError
from emkit.results import ResultsDB, register_table

register_table(
    "judgments",
    """CREATE TABLE IF NOT EXISTS judgments (
        judge_id TEXT NOT NULL,       -- which judge (never contains an API key)
        metric TEXT NOT NULL,         -- aligned, coherent or rubric
        prompt_hash TEXT NOT NULL,    -- hash of the judge template + question
        answer_hash TEXT NOT NULL,    -- hash of the answer text
        score REAL,                   -- NULL when the judge gave no valid score
        label TEXT,                   -- rubric label (REFUSAL, INCOHERENT, ..., 1..5)
        raw TEXT NOT NULL,            -- the judge's raw output as JSON
        created REAL NOT NULL DEFAULT (julianday('now')),
        PRIMARY KEY (judge_id, metric, prompt_hash, answer_hash)
    );
    CREATE INDEX IF NOT EXISTS judgments_by_answer ON judgments (judge_id, answer_hash)""",
)


def text_hash(text: str) -> str:
    """A short stable hash of a text (sha256, 16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Item:
    """One (question, answer) pair to judge; ``prompts`` are per-metric templates from the question file."""

    question: str
    answer: str
    prompts: Mapping[str, str] | None = field(default=None, hash=False, compare=False)


@dataclass
class Scored:
    """What a back-end returns for one (item, metric): score (None = no valid score), raw output, label."""

    score: float | None
    raw: Any
    label: str | None = None


@dataclass
class Judgment:
    """A stored judgment: the score, the raw output (JSON text) and the keys it is cached under."""

    metric: str
    score: float | None
    raw: str
    label: str | None = None
    judge_id: str = ""
    prompt_hash: str = ""
    answer_hash: str = ""
    cached: bool = False


@runtime_checkable
class Judge(Protocol):
    """A judge: an id (stable, secret-free), the metrics it gives, and :meth:`judge`."""

    id: str
    metrics: tuple[str, ...]

    def judge(self, items: Sequence[Item], cache: JudgmentCache | None = None, *,
              progress: bool = True) -> list[dict[str, Judgment]]: ...


class JudgmentCache:
    """Judgments stored in one or more ``results.sqlite`` files: read from any, written to all."""

    def __init__(self, *dbs: ResultsDB | str | Path):
        self.dbs = [d if isinstance(d, ResultsDB) else ResultsDB(d) for d in dbs]
        if not self.dbs:
            raise ValueError("JudgmentCache needs at least one database")

    def get(self, judge_id: str, keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], Judgment]:
        """Look up (metric, prompt_hash, answer_hash) keys; returns those found.

        Judgments found only in a later file (a shared cache) are copied into the first (the run's).
        """
        found: dict[tuple[str, str, str], Judgment] = {}
        want = set(keys)
        for n, db in enumerate(self.dbs):
            before = set(found)
            if not want:
                break
            hashes = sorted({k[2] for k in want})
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                rows = db.query(
                    f"SELECT * FROM judgments WHERE judge_id=? AND answer_hash IN ({','.join('?' * len(chunk))})",
                    (judge_id, *chunk),
                )
                for r in rows:
                    k = (r["metric"], r["prompt_hash"], r["answer_hash"])
                    if k in want:
                        found[k] = Judgment(r["metric"], r["score"], r["raw"], r["label"], judge_id,
                                            r["prompt_hash"], r["answer_hash"], cached=True)
                        want.discard(k)
            if n > 0 and len(found) > len(before):
                self.dbs[0].insert("judgments", [_row(found[k]) for k in set(found) - before], replace=True)
        return found

    def put(self, judgments: Sequence[Judgment]) -> None:
        rows = [_row(j) for j in judgments]
        for db in self.dbs:
            db.insert("judgments", rows, replace=True)


class BaseJudge:
    """Cache handling and chunking shared by all back-ends.

    Subclasses set ``id`` and ``metrics`` and implement :meth:`prompt_key` (the text that identifies
    the prompt apart from the answer) and :meth:`score_pairs` (score (item, metric) pairs), or
    :meth:`score_batches` to hand results over as they arrive.
    """

    id: str = "judge"
    metrics: tuple[str, ...] = ()
    chunk_size: int = 64

    def prompt_key(self, metric: str, item: Item) -> str:
        raise NotImplementedError

    def score_pairs(self, pairs: Sequence[tuple[Item, str]]) -> list[Scored]:
        raise NotImplementedError

    def score_batches(self, pairs: Sequence[tuple[Item, str]]) -> Iterator[list[tuple[int, Scored]]]:
        """Yield (index into ``pairs``, result) batches as results arrive; the default scores chunk by chunk.

        Back-ends that answer one request at a time (the API judge) yield each result on its own, so
        it is stored at once and nothing already paid for is lost when a later request fails.
        """
        for start in range(0, len(pairs), self.chunk_size):
            chunk = pairs[start : start + self.chunk_size]
            yield list(enumerate(self.score_pairs(chunk), start))

    def judge(self, items: Sequence[Item], cache: JudgmentCache | None = None, *,
              progress: bool = True) -> list[dict[str, Judgment]]:
        """Judge every item on every metric; cached judgments are reused, new ones stored as they arrive.

        When scoring fails part way, the judgments already made are stored and the error says how
        many, so running the same command again sends only the missing ones.
        """
        keyed = []
        for it in items:
            ah = text_hash(it.answer)
            keyed.append({m: (m, text_hash(self.prompt_key(m, it)), ah) for m in self.metrics})
        all_keys = [k for d in keyed for k in d.values()]
        known = cache.get(self.id, all_keys) if cache is not None else {}
        todo: list[tuple[int, str]] = []
        seen: set[tuple[str, str, str]] = set()
        for i, d in enumerate(keyed):
            for m, k in d.items():
                if k not in known and k not in seen:
                    seen.add(k)
                    todo.append((i, m))
        bar = tqdm(total=len(todo), desc=f"judging [{self.id}]", unit="score", disable=not progress or not todo)
        stored = 0
        try:
            for batch in self.score_batches([(items[i], m) for i, m in todo]):
                new = []
                for n, s in batch:
                    i, m = todo[n]
                    _, ph, ah = keyed[i][m]
                    new.append(Judgment(m, None if s.score is None else float(s.score), _dump(s.raw), s.label,
                                        self.id, ph, ah))
                if cache is not None:
                    cache.put(new)
                stored += len(new)
                for j in new:
                    known[(j.metric, j.prompt_hash, j.answer_hash)] = j
                bar.update(len(new))
        except EmkitError as e:
            kept = f"{stored} of {len(todo)} new judgments {'stored' if cache is not None else 'made (no cache)'}"
            raise EmkitError(e.message, hint=f"{kept}; {e.hint or 'fix the cause'}, then run the same command "
                             "again to judge only the missing ones") from None
        finally:
            bar.close()
        return [{m: known[k] for m, k in d.items()} for d in keyed]


def _row(j: Judgment) -> dict[str, Any]:
    return dict(judge_id=j.judge_id, metric=j.metric, prompt_hash=j.prompt_hash, answer_hash=j.answer_hash,
                score=j.score, label=j.label, raw=j.raw)


def _dump(raw: Any) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, sort_keys=True)


def fill_template(template: str, question: str, answer: str) -> str:
    """Put the question and answer into ``{question}`` / ``{answer}`` in one pass.

    Other braces in the template (or braces inside the question/answer) are left alone, unlike
    ``str.format``.
    """
    import re

    values = {"question": question, "answer": answer}
    return re.sub(r"\{(question|answer)\}", lambda m: values[m.group(1)], template)
