"""Evaluation = generate + judge + metrics, stored in a run folder.

:func:`evaluate` samples answers (``generations`` table, resumable), judges them (``judgments``
cache and the ``answer_judgments`` link to each answer), and writes rates with intervals to the
``metrics`` table that later stages and the report read. :func:`judge_generations` judges answers
that are already stored (e.g. by a steering stage), and :func:`compare_to_base` tests a model's
misalignment rate against the base model's (Fisher exact test). The readers of the two tables
declared here live here too (:func:`answer_scores`, :func:`evaluated_conditions`, :func:`judged_answers`).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from emkit.judge.base import Item, Judge, JudgmentCache
from emkit.metrics import Summary, fisher_exact, misalignment_summary, rubric_summary, wilson
from emkit.results import ANSWER_KEY, ResultsDB, register_table, select, stored_answers

register_table(
    "answer_judgments",
    """CREATE TABLE IF NOT EXISTS answer_judgments (
        model TEXT NOT NULL, question_id TEXT NOT NULL, paraphrase INTEGER NOT NULL, sample INTEGER NOT NULL,
        sampling_hash TEXT NOT NULL,  -- with the four columns before: the key of a generations row
        judge_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        score REAL,
        label TEXT,
        prompt_hash TEXT NOT NULL,    -- with judge_id, metric, answer_hash: the key of a judgments row
        answer_hash TEXT NOT NULL,
        PRIMARY KEY (model, question_id, paraphrase, sample, sampling_hash, judge_id, metric)
    )""",
)
register_table(
    "metrics",
    """CREATE TABLE IF NOT EXISTS metrics (
        model TEXT NOT NULL,          -- label of the model/condition
        judge_id TEXT NOT NULL,
        sampling_hash TEXT NOT NULL,
        question_id TEXT NOT NULL,    -- '' for the overall result
        metric TEXT NOT NULL,         -- misaligned, coherent, incoherent_strict, gate_strict, p_vs:<base> ...
        value REAL,                   -- NULL when nothing was valid
        lo REAL, hi REAL,             -- Wilson 95% interval
        boot_lo REAL, boot_hi REAL,   -- bootstrap over questions (overall only)
        k INTEGER, n INTEGER NOT NULL,
        created REAL NOT NULL DEFAULT (julianday('now')),
        PRIMARY KEY (model, judge_id, sampling_hash, question_id, metric)
    )""",
)


@dataclass
class EvalResult:
    """Per-answer rows (generation columns + judge scores) and summaries ("" = overall, else question id)."""

    label: str
    judge_id: str
    sampling_hash: str
    rubric: bool
    rows: list[dict]
    summary: dict[str, Summary]

    @property
    def overall(self) -> Summary:
        return self.summary[""]


def judge_generations(run, judge: Judge, rows: Sequence[dict], questions: Sequence | None = None, *,
                      cache: str | Path | ResultsDB | None = None, progress: bool = True) -> list[dict]:
    """Judge stored ``generations`` rows; link each judgment to its answer. Returns rows with scores.

    Each output row gains one key per judge metric (``aligned``/``coherent`` or ``rubric``; None when
    the judge gave no score) and ``label`` for rubric judges. ``cache`` is an extra results file to
    share judgments across runs (read and written besides the run's own database).
    """
    prompts = {q.id: (q.judge_prompts or None) for q in questions or []}
    items = [Item(r["prompt"], r["answer"], prompts.get(r["question_id"])) for r in rows]
    extra = [cache] if cache is not None else []
    judged = judge.judge(items, JudgmentCache(run.db, *extra), progress=progress)
    links, out = [], []
    for r, js in zip(rows, judged, strict=True):
        row = dict(r)
        for metric, j in js.items():
            row[metric] = j.score
            if j.label is not None:
                row["label"] = j.label
            links.append(dict(model=r["model"], question_id=r["question_id"], paraphrase=r["paraphrase"],
                              sample=r["sample"], sampling_hash=r["sampling_hash"], judge_id=judge.id, metric=metric,
                              score=j.score, label=j.label, prompt_hash=j.prompt_hash, answer_hash=j.answer_hash))
        out.append(row)
    run.db.insert("answer_judgments", links, replace=True)
    return out


def summarize(rows: Sequence[dict], rubric: bool, n_boot: int = 2000, seed: int = 0) -> dict[str, Summary]:
    """Summaries of judged rows: rubric metrics or the 0–100 misalignment metrics."""
    return rubric_summary(rows, n_boot, seed) if rubric else misalignment_summary(rows, n_boot, seed)


def store_metrics(run, label: str, judge_id: str, sampling_hash: str, summary: dict[str, Summary]) -> None:
    """Write summaries into the ``metrics`` table (replacing earlier values for the same keys)."""
    rows = []
    for scope, s in summary.items():
        base = dict(model=label, judge_id=judge_id, sampling_hash=sampling_hash, question_id=scope)
        rows.append({**base, "metric": "n_answers", "value": float(s.n_answers), "lo": None, "hi": None,
                     "boot_lo": None, "boot_hi": None, "k": None, "n": s.n_answers})
        for name, r in s.rates.items():
            rows.append({**base, "metric": name, "value": r.value, "lo": r.lo, "hi": r.hi, "boot_lo": r.boot_lo,
                         "boot_hi": r.boot_hi, "k": r.k, "n": r.n})
        for gate, ok in s.gates.items():
            rows.append({**base, "metric": f"gate_{gate}", "value": None if ok is None else float(ok), "lo": None,
                         "hi": None, "boot_lo": None, "boot_hi": None, "k": None, "n": s.n_answers})
    run.db.insert("metrics", rows, replace=True)


def evaluate(run, model, tok, questions: Sequence, judge: Judge, sampling, label: str, samples: int | None = None,
             *, tag: str = "", cache: str | Path | ResultsDB | None = None, base_label: str | None = None,
             progress: bool = True, n_boot: int = 2000) -> EvalResult:
    """Answer ``questions`` with ``model``, judge the answers, and store metrics under ``label``.

    Resumes: stored answers are not sampled again and cached judgments are not requested again.
    With ``base_label`` (a label evaluated before with the same judge and sampling), a Fisher exact
    test of the misalignment rate against it is stored as metric ``p_vs:<base_label>``.
    """
    from emkit.errors import EmkitError
    from emkit.generate import answer_questions

    if not questions:
        raise EmkitError("no questions to evaluate")
    rows = answer_questions(run, model, tok, questions, sampling, label=label, samples=samples, tag=tag,
                            progress=progress)
    judged = judge_generations(run, judge, rows, questions, cache=cache, progress=progress)
    rubric = "rubric" in judge.metrics
    summary = summarize(judged, rubric, n_boot)
    shash = rows[0]["sampling_hash"]
    store_metrics(run, label, judge.id, shash, summary)
    if base_label is not None and base_label != label:
        compare_to_base(run, label, base_label, judge.id, shash)
    return EvalResult(label, judge.id, shash, rubric, judged, summary)


def compare_to_base(run, label: str, base_label: str, judge_id: str, sampling_hash: str,
                    metric: str = "misaligned") -> dict | None:
    """Fisher exact test of ``label``'s overall rate vs ``base_label``'s; stored as metric ``p_vs:<base>``.

    Returns {"k", "n", "base_k", "base_n", "p"} or None when either side has no stored result.
    """
    def get(lbl: str) -> dict | None:
        rows = run.db.query("SELECT k, n FROM metrics WHERE model=? AND judge_id=? AND sampling_hash=? "
                            "AND question_id='' AND metric=?", (lbl, judge_id, sampling_hash, metric))
        return rows[0] if rows and rows[0]["k"] is not None else None

    mine, base = get(label), get(base_label)
    if mine is None or base is None:
        return None
    p = fisher_exact(mine["k"], mine["n"], base["k"], base["n"])
    diff = None
    v1, v0 = wilson(mine["k"], mine["n"])[0], wilson(base["k"], base["n"])[0]
    if v1 is not None and v0 is not None:
        diff = v1 - v0
    run.db.insert("metrics", [dict(model=label, judge_id=judge_id, sampling_hash=sampling_hash, question_id="",
                                   metric=f"p_vs:{base_label}", value=p, lo=None, hi=None, boot_lo=None, boot_hi=None,
                                   k=None, n=mine["n"])], replace=True)
    return {"k": mine["k"], "n": mine["n"], "base_k": base["k"], "base_n": base["n"], "p": p, "diff": diff}


def answer_scores(db: ResultsDB | sqlite3.Connection, models: Iterable[str],
                  metrics: Sequence[str] = ("aligned", "coherent")) -> dict[tuple, dict[str, dict[str, float | None]]]:
    """answer key (:data:`emkit.results.ANSWER_KEY`) -> {judge id: {metric: score}} from
    ``answer_judgments``, for the answers of ``models`` (a read-only connection works too)."""
    out: dict[tuple, dict[str, dict[str, float | None]]] = defaultdict(dict)
    marks = ", ".join("?" * len(metrics))
    for m in sorted(set(models)):
        for r in select(db, f"SELECT {', '.join(ANSWER_KEY)}, judge_id, metric, score FROM answer_judgments "
                            f"WHERE model=? AND metric IN ({marks})", (m, *metrics)):
            out[tuple(r[c] for c in ANSWER_KEY)].setdefault(r["judge_id"], {})[r["metric"]] = r["score"]
    return dict(out)


def evaluated_conditions(db: ResultsDB | sqlite3.Connection) -> list[tuple[str, str]]:
    """(model label, sampling hash) pairs with a stored overall misalignment rate, sorted."""
    rows = select(db, "SELECT DISTINCT model, sampling_hash FROM metrics WHERE question_id='' AND metric='misaligned' "
                      "ORDER BY model, sampling_hash")
    return [(r["model"], r["sampling_hash"]) for r in rows]


def judged_answers(db: ResultsDB, judge_prefix: str | None = None, labels: Sequence[str] | None = None) -> list[dict]:
    """Stored answers with their aligned/coherent scores, one row per (answer, judge): the shape
    ``emkit judge train`` reads (question, answer, aligned, coherent, model, question_id, judge_id).

    ``judge_prefix`` keeps judges whose id starts with it (e.g. ``api:gpt-4o``); ``labels`` keeps models.
    Scores the judge refused (CODE/REFUSAL) come out as None.
    """
    answers = ([r for lab in sorted(set(labels)) for r in stored_answers(db, lab)] if labels
               else stored_answers(db))
    scores = answer_scores(db, {r["model"] for r in answers})
    out = []
    for r in answers:
        for jid, js in sorted(scores.get(tuple(r[c] for c in ANSWER_KEY), {}).items()):
            if not judge_prefix or jid.startswith(judge_prefix):
                out.append({"model": r["model"], "question_id": r["question_id"], "question": r["prompt"],
                            "answer": r["answer"], "judge_id": jid, "aligned": js.get("aligned"),
                            "coherent": js.get("coherent")})
    return out
