"""Model diffing with one SAE: which latents did fine-tuning switch on?

The SAE is trained on the original model; the same SAE encodes the activations of the original
model and of every fine-tune on the same inputs. For each latent we record its mean activation
(zeros included) and firing rate; its *score* is the mean-activation increase fine-tuned − base,
averaged over the fine-tunes judged misaligned (Wang et al., 2025).

Inputs are either the evaluation prompts (``source="eval"``, prompt tokens, optionally each model's
own sampled answers from the ``generations`` table) or, in the unsupervised mode, the fine-tuning
data itself (``source="data:NAME"``, answer tokens; no evaluation needed).

This module runs models and stores results (:func:`diff_run`, :func:`collect_stats`, the readers
and writers of the two tables below); the statistics themselves are in :mod:`emkit.diff_stats`
(re-exported here).

Tables (``results.sqlite``):

``latent_stats``   one row per (model, sae_id, source, token_set, latent): mean_act, firing_rate, n_tokens.
``latent_ranking`` one row per (sae_id, base, source, token_set, rank): latent, score, deltas (JSON
                   ``{label: ft - base}``), misaligned (JSON list of the labels averaged), base_mean.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emkit.activations import MAX_NORM_RATIO
from emkit.diff_stats import (  # the statistics half of the API, re-exported here
    TOKEN_SETS,
    LatentStats,
    Ranking,
    StatsAccumulator,
    control_ranking,
    diff_models,
    latent_stats,
    sae_id,
    stats_for_seqs,
)
from emkit.errors import EmkitError
from emkit.results import register_table, stored_answers, stored_conditions

__all__ = ["TOKEN_SETS", "DiffConfig", "LatentStats", "Ranking", "StatsAccumulator", "answer_items", "collect_stats",
           "control_ranking", "diff_models", "diff_run", "eval_items", "latent_stats", "model_stats", "ranking_rows",
           "sae_id", "stats_for_seqs", "store_ranking", "store_stats", "stored_ranking", "stored_stats"]

register_table(
    "latent_stats",
    """CREATE TABLE IF NOT EXISTS latent_stats (
        model TEXT NOT NULL,          -- label of the model (base or a fine-tune)
        sae_id TEXT NOT NULL,         -- emkit.diff.sae_id(sae)
        source TEXT NOT NULL,         -- eval | eval-answers[:SAMPLING_HASH] | data:NAME
        token_set TEXT NOT NULL,      -- prompt | answer | all
        latent INTEGER NOT NULL,
        mean_act REAL NOT NULL,       -- mean activation over the tokens (zeros included)
        firing_rate REAL NOT NULL,    -- fraction of tokens where the latent is active
        n_tokens INTEGER NOT NULL,
        created REAL NOT NULL DEFAULT (julianday('now')),
        PRIMARY KEY (model, sae_id, source, token_set, latent)
    )""",
)
register_table(
    "latent_ranking",
    """CREATE TABLE IF NOT EXISTS latent_ranking (
        sae_id TEXT NOT NULL,
        base TEXT NOT NULL,           -- label of the original model
        source TEXT NOT NULL,
        token_set TEXT NOT NULL,
        rank INTEGER NOT NULL,        -- 1 = largest score
        latent INTEGER NOT NULL,
        score REAL NOT NULL,          -- mean over `misaligned` of (fine-tuned - base) mean activation
        deltas TEXT NOT NULL,         -- JSON {label: fine-tuned - base} for every fine-tune
        misaligned TEXT NOT NULL,     -- JSON list of the labels averaged into the score
        base_mean REAL NOT NULL,
        base_firing REAL NOT NULL,
        created REAL NOT NULL DEFAULT (julianday('now')),
        PRIMARY KEY (sae_id, base, source, token_set, rank)
    )""",
)


def ranking_rows(ranking: Ranking, *, sae: str, base: str, source: str, token_set: str,
                 n: int | None = None) -> list[dict[str, Any]]:
    """Rows for the ``latent_ranking`` table (all latents unless ``n``)."""
    rows = []
    for r in ranking.top(n or len(ranking.order)):
        rows.append({"sae_id": sae, "base": base, "source": source, "token_set": token_set, "rank": r["rank"],
                     "latent": r["latent"], "score": r["score"], "deltas": json.dumps(r["deltas"]),
                     "misaligned": json.dumps(ranking.misaligned), "base_mean": r["base_mean"],
                     "base_firing": r["base_firing"]})
    return rows


def store_ranking(db: Any, ranking: Ranking, *, sae: str, base: str, source: str, token_set: str,
                  n: int | None = None) -> None:
    """Replace the stored ranking of (``sae``, ``base``, ``source``, ``token_set``) with ``ranking``'s best ``n``."""
    with db.transaction() as c:
        c.execute("DELETE FROM latent_ranking WHERE sae_id=? AND base=? AND source=? AND token_set=?",
                  (sae, base, source, token_set))
    db.insert("latent_ranking", ranking_rows(ranking, sae=sae, base=base, source=source, token_set=token_set, n=n),
              replace=True)


def stored_stats(db: Any, label: str, sae: str, source: str, token_set: str, num_latents: int
                 ) -> LatentStats | None:
    """The stored statistics of ``label`` (None unless all ``num_latents`` latents are stored)."""
    rows = db.query("SELECT latent, mean_act, firing_rate, n_tokens FROM latent_stats "
                    "WHERE model=? AND sae_id=? AND source=? AND token_set=?", (label, sae, source, token_set))
    return LatentStats.from_rows(rows, num_latents) if len(rows) == num_latents else None


def store_stats(db: Any, stats: LatentStats, label: str, sae: str, source: str, token_set: str) -> None:
    """Write (or replace) ``label``'s statistics in ``latent_stats``."""
    db.insert("latent_stats", stats.rows(model=label, sae_id=sae, source=source, token_set=token_set), replace=True)


def stored_ranking(db: Any, sae: str | None = None, source: str | None = None, token_set: str | None = None,
                   n: int = 20) -> list[dict[str, Any]]:
    """The best ``n`` rows of a stored ranking (the most recent one matching the filters)."""
    where, params = [], []
    for col, val in (("sae_id", sae), ("source", source), ("token_set", token_set)):
        if val is not None:
            where.append(f"{col}=?")
            params.append(val)
    cond = " AND ".join(where) or "1"
    latest = db.query(f"SELECT sae_id, base, source, token_set FROM latent_ranking WHERE {cond} "
                      "ORDER BY created DESC, rank ASC LIMIT 1", params)
    if not latest:
        return []
    k = latest[0]  # the newest ranking's key; then only its best n rows are read
    same = db.query("SELECT * FROM latent_ranking WHERE sae_id=? AND base=? AND source=? AND token_set=? "
                    "ORDER BY rank LIMIT ?", (k["sae_id"], k["base"], k["source"], k["token_set"], n))
    for r in same:
        r["deltas"] = json.loads(r["deltas"])
        r["misaligned"] = json.loads(r["misaligned"])
    return same


# ---------------------------------------------------------------- run level


@dataclass
class DiffConfig:
    """What to encode. ``answers`` adds each model's own sampled answers (``generations`` table)."""

    token_sets: list[str] = field(default_factory=lambda: ["prompt"])
    answers: bool = False
    max_answers: int = 200
    max_length: int = 512
    batch_size: int = 8
    chunk: int = 64
    top_n: int = 20
    max_norm_ratio: float | None = MAX_NORM_RATIO
    sampling_hash: str | None = None  # which stored answers to use when a label has several conditions


def eval_items(questions: Sequence[Any]) -> list[list[dict[str, str]]]:
    """One chat prompt (system + user, ending in the generation prompt) per question paraphrase."""
    from emkit.generate import build_prompt

    return [build_prompt(q, p) for q in questions for p in q.paraphrases]


def answer_items(db: Any, label: str, limit: int | None = None, sampling_hash: str | None = None, *,
                 questions: Sequence[str] | None = None) -> list[list[dict[str, str]]]:
    """Chats (prompt + the model's own answer) from the ``generations`` table for ``label``.

    A label may hold answers of several conditions (e.g. steering tags); ``sampling_hash`` picks one,
    and without it a label with several is refused rather than mixed. ``questions`` keeps those ids.
    """
    if sampling_hash is None:
        hashes = stored_conditions(db, label)
        if len(hashes) > 1:
            raise EmkitError(f"{label!r} has answers from {len(hashes)} sampling conditions: {hashes}",
                             hint="choose one with DiffConfig.sampling_hash / --answers-hash")
    out = []
    for r in stored_answers(db, label, sampling_hash=sampling_hash, questions=questions, nonempty=True, limit=limit):
        msgs = [{"role": "system", "content": r["system"]}] if r["system"] else []
        out.append(msgs + [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}])
    return out


def model_stats(run: Any, sae: Any, model: Any, tok: Any, label: str, items: Sequence[Any], *, source: str,
                token_sets: Sequence[str], layer: int | None = None, cfg: DiffConfig | None = None,
                progress: bool = True, force: bool = False) -> dict[str, LatentStats]:
    """Per token set, the latent statistics of ``model`` on ``items``; stored in ``latent_stats``.

    Statistics already stored for (label, SAE, source, token set) are read back instead (resume).
    """
    from tqdm.auto import tqdm

    from emkit.activations import collect

    cfg = cfg or DiffConfig()
    sid = sae_id(sae)
    layer = sae.cfg.layer if layer is None else layer
    if layer is None or layer < 0:
        raise EmkitError("the SAE does not record its layer", hint="pass the layer explicitly")
    bad = [t for t in token_sets if t not in TOKEN_SETS]
    if bad:
        raise EmkitError(f"unknown token set(s) {bad}", hint=f"use {TOKEN_SETS}")
    out: dict[str, LatentStats] = {}
    todo = []
    for ts in token_sets:
        st = None if force else stored_stats(run.db, label, sid, source, ts, sae.num_latents)
        if st is not None:
            out[ts] = st
        else:
            todo.append(ts)
    if not todo:
        return out
    if not items:
        raise EmkitError(f"{label}: nothing to encode for source {source!r}")
    accs = {ts: StatsAccumulator(sae) for ts in todo}
    bar = tqdm(total=len(items), desc=f"latents [{label}]", unit="seq", disable=not progress)
    for s in range(0, len(items), cfg.chunk):
        seqs = collect(model, tok, layer, list(items[s : s + cfg.chunk]), max_length=cfg.max_length,
                       batch_size=cfg.batch_size)
        for ts in todo:
            for q in seqs:
                accs[ts].add(q.select(ts, max_norm_ratio=cfg.max_norm_ratio))
        bar.update(len(seqs))
    bar.close()
    for ts in todo:
        st = accs[ts].result()
        if st.n_tokens == 0:
            raise EmkitError(f"{label}: no {ts} tokens in source {source!r}",
                             hint="prompts have no answer tokens; use --answers or the prompt token set")
        store_stats(run.db, st, label, sid, source, ts)
        out[ts] = st
    return out


# a job: (source, token sets, the items, or a function of the label giving that model's items)
Job = tuple[str, Sequence[str], Sequence[Any] | Callable[[str], Sequence[Any]]]


def collect_stats(run: Any, sae: Any, models: Mapping[str, Any], jobs: Sequence[Job], *,
                  cfg: DiffConfig | None = None, layer: int | None = None, progress: bool = True
                  ) -> dict[tuple[str, str], dict[str, LatentStats]]:
    """``{(source, token_set): {label: stats}}`` of every model on every job's items (see :func:`diff_run`
    for ``models``). A model whose statistics are all stored is not loaded; they are read back."""
    from emkit.models.load import as_loaded

    stats: dict[tuple[str, str], dict[str, LatentStats]] = {}
    sid = sae_id(sae)
    for label, spec in models.items():
        cached = all(stored_stats(run.db, label, sid, source, ts, sae.num_latents) is not None
                     for source, token_sets, _ in jobs for ts in token_sets)
        model, tok = (None, None) if cached else as_loaded(spec)
        for source, token_sets, items in jobs:
            its = items(label) if callable(items) else items
            got = model_stats(run, sae, model, tok, label, its, source=source, token_sets=token_sets, layer=layer,
                              cfg=cfg, progress=progress)
            for ts, st in got.items():
                stats.setdefault((source, ts), {})[label] = st
        del model
    return stats


def diff_run(run: Any, sae: Any, models: Mapping[str, Any], base: str, *, questions: Sequence[Any] | None = None,
             data: Sequence[Any] | None = None, data_name: str = "data", misaligned: Sequence[str] | None = None,
             cfg: DiffConfig | None = None, layer: int | None = None, progress: bool = True
             ) -> dict[tuple[str, str], Ranking]:
    """Encode every model on the same inputs, rank latents, store stats and rankings in ``run.db``.

    ``models`` maps labels to a model spec (str, loaded with :func:`emkit.models.load_model`), a
    ``(model, tokenizer)`` pair, or a function returning one (called when that model's turn comes);
    ``base`` is the original model's label. Give ``questions`` (eval prompts; with ``cfg.answers``
    also each model's own answers) or ``data`` (unsupervised mode: chats of the fine-tuning set,
    answer tokens). Returns ``{(source, token_set): Ranking}``.
    """
    cfg = cfg or DiffConfig()
    if base not in models:
        raise EmkitError(f"the base model {base!r} is not among the models {list(models)}")
    if len(models) < 2:
        raise EmkitError("give the base model and at least one fine-tune")
    if (questions is None) == (data is None):
        raise EmkitError("give either evaluation questions or fine-tuning data (unsupervised mode)")
    jobs: list[Job] = []
    if questions is not None:
        prompts = eval_items(questions)
        if not prompts:
            raise EmkitError("no evaluation questions")
        jobs.append(("eval", [t for t in cfg.token_sets if t != "answer"] or ["prompt"], prompts))
        if cfg.answers:
            jobs.append(("eval-answers" + (f":{cfg.sampling_hash}" if cfg.sampling_hash else ""), ["answer"],
                         lambda lab: answer_items(run.db, lab, cfg.max_answers, cfg.sampling_hash)))
    else:
        if not data:
            raise EmkitError("the fine-tuning data is empty")
        jobs.append((f"data:{data_name}", ["answer"], list(data)))
    if cfg.answers and questions is not None:
        missing = [lab for lab in models if not answer_items(run.db, lab, 1, cfg.sampling_hash)]
        if missing:
            raise EmkitError(f"no sampled answers stored for {missing}",
                             hint="run `emkit generate --label LABEL` for each model into this run first")
    stats = collect_stats(run, sae, models, jobs, cfg=cfg, layer=layer, progress=progress)
    sid = sae_id(sae)
    out: dict[tuple[str, str], Ranking] = {}
    for (source, ts), by_label in stats.items():
        fts = {k: v for k, v in by_label.items() if k != base}
        out[(source, ts)] = ranking = diff_models(by_label[base], fts, misaligned)
        store_ranking(run.db, ranking, sae=sid, base=base, source=source, token_set=ts, n=max(cfg.top_n, 200))
    return out
