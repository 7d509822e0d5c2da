"""Model diffing with one SAE: which latents did fine-tuning switch on?

The SAE is trained on the original model; the same SAE encodes the activations of the original
model and of every fine-tune on the same inputs. For each latent we record its mean activation
(zeros included) and firing rate; its *score* is the mean-activation increase fine-tuned − base,
averaged over the fine-tunes judged misaligned (Wang et al., 2025).

Inputs are either the evaluation prompts (``source="eval"``, prompt tokens, optionally each model's
own sampled answers from the ``generations`` table) or, in the unsupervised mode, the fine-tuning
data itself (``source="data:NAME"``, answer tokens; no evaluation needed).

Tables (``results.sqlite``):

``latent_stats``   one row per (model, sae_id, source, token_set, latent): mean_act, firing_rate, n_tokens.
``latent_ranking`` one row per (sae_id, base, source, token_set, rank): latent, score, deltas (JSON
                   ``{label: ft - base}``), misaligned (JSON list of the labels averaged), base_mean.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from emkit.activations import MAX_NORM_RATIO
from emkit.errors import EmkitError
from emkit.results import register_table

TOKEN_SETS = ("prompt", "answer", "all")

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


def sae_id(sae: Any) -> str:
    """A short stable id of an SAE: hook, size, and a digest of its decoder."""
    digest = hashlib.sha256(sae.W_dec.detach().float().cpu().numpy()[:64].tobytes()).hexdigest()[:10]
    hook = sae.cfg.hook or "sae"
    return f"{hook}:{sae.num_latents}x{sae.k}:{digest}"


@dataclass
class LatentStats:
    """Per-latent mean activation (zeros included) and firing rate over ``n_tokens`` tokens."""

    mean: torch.Tensor
    firing: torch.Tensor
    n_tokens: int

    @classmethod
    def empty(cls, num_latents: int) -> LatentStats:
        return cls(torch.zeros(num_latents, dtype=torch.float64), torch.zeros(num_latents, dtype=torch.float64), 0)

    def rows(self, **key: Any) -> list[dict[str, Any]]:
        m, f = self.mean.tolist(), self.firing.tolist()
        return [{**key, "latent": i, "mean_act": m[i], "firing_rate": f[i], "n_tokens": self.n_tokens}
                for i in range(len(m))]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], num_latents: int) -> LatentStats:
        mean = torch.zeros(num_latents, dtype=torch.float64)
        firing = torch.zeros(num_latents, dtype=torch.float64)
        for r in rows:
            mean[r["latent"]] = r["mean_act"]
            firing[r["latent"]] = r["firing_rate"]
        return cls(mean, firing, int(rows[0]["n_tokens"]) if rows else 0)


class StatsAccumulator:
    """Running per-latent sums, so statistics over many inputs need little memory."""

    def __init__(self, sae: Any, batch_size: int = 4096):
        self.sae = sae
        self.batch_size = batch_size
        self.total = torch.zeros(sae.num_latents, dtype=torch.float64)
        self.fired = torch.zeros(sae.num_latents, dtype=torch.float64)
        self.n = 0

    @torch.no_grad()
    def add(self, acts: torch.Tensor) -> None:
        for s in range(0, len(acts), self.batch_size):
            block = acts[s : s + self.batch_size]
            idx, vals = self.sae.encode(block.to(self.sae.W_dec.device))
            idx, vals = idx.reshape(-1).cpu(), vals.reshape(-1).double().cpu()
            self.total.index_add_(0, idx, vals)
            self.fired.index_add_(0, idx, (vals > 0).double())
            self.n += len(block)

    def result(self) -> LatentStats:
        if self.n == 0:
            return LatentStats.empty(self.sae.num_latents)
        return LatentStats(self.total / self.n, self.fired / self.n, self.n)


def latent_stats(sae: Any, acts: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 4096) -> LatentStats:
    """Encode activation rows ``[n, d]`` (or an iterable of such blocks) and summarise each latent."""
    acc = StatsAccumulator(sae, batch_size)
    for block in [acts] if isinstance(acts, torch.Tensor) else acts:
        acc.add(block)
    return acc.result()


def stats_for_seqs(sae: Any, seqs: Sequence[Any], token_set: str = "prompt",
                   max_norm_ratio: float | None = MAX_NORM_RATIO) -> LatentStats:
    """:func:`latent_stats` over the ``token_set`` rows of :class:`emkit.activations.SeqActs`
    (position 0 and massive-norm rows left out, as when the SAE was trained)."""
    if token_set not in TOKEN_SETS:
        raise EmkitError(f"unknown token set {token_set!r}", hint=f"use one of {TOKEN_SETS}")
    return latent_stats(sae, [s.select(token_set, max_norm_ratio=max_norm_ratio) for s in seqs])


@dataclass
class Ranking:
    """Latents ordered by score (descending), with each fine-tune's delta."""

    order: list[int]
    scores: torch.Tensor
    deltas: dict[str, torch.Tensor]
    misaligned: list[str]
    base: LatentStats
    finetuned: dict[str, LatentStats] = field(default_factory=dict)

    def top(self, n: int = 20) -> list[dict[str, Any]]:
        """The top ``n`` as rows: rank, latent, score, base mean/firing, and per-model deltas/firing."""
        out = []
        for r, lat in enumerate(self.order[:n], 1):
            out.append({
                "rank": r, "latent": lat, "score": float(self.scores[lat]),
                "base_mean": float(self.base.mean[lat]), "base_firing": float(self.base.firing[lat]),
                "deltas": {k: float(v[lat]) for k, v in self.deltas.items()},
                "firing": {k: float(s.firing[lat]) for k, s in self.finetuned.items()},
            })
        return out


def diff_models(base: LatentStats, finetuned: Mapping[str, LatentStats],
                misaligned: Sequence[str] | None = None) -> Ranking:
    """Rank latents by their mean-activation increase over the ``misaligned`` fine-tunes (default: all).

    Ties (e.g. latents silent everywhere) keep latent order, so the ranking is deterministic.
    """
    if not finetuned:
        raise EmkitError("no fine-tuned models to compare with the base model")
    chosen = list(misaligned) if misaligned else list(finetuned)
    unknown = [m for m in chosen if m not in finetuned]
    if unknown:
        raise EmkitError(f"misaligned model(s) {unknown} are not among the fine-tunes {list(finetuned)}")
    n = len(base.mean)
    for k, s in finetuned.items():
        if len(s.mean) != n:
            raise EmkitError(f"{k}: {len(s.mean)} latents, base has {n} (different SAEs?)")
        if s.n_tokens == 0:
            raise EmkitError(f"{k}: no tokens were encoded", hint="check the token set (answers need generations)")
    if base.n_tokens == 0:
        raise EmkitError("base model: no tokens were encoded")
    deltas = {k: (s.mean - base.mean).double() for k, s in finetuned.items()}
    scores = torch.stack([deltas[m] for m in chosen]).mean(0)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    return Ranking(order, scores, deltas, chosen, base, dict(finetuned))


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


def stored_ranking(db: Any, sae: str | None = None, source: str | None = None, token_set: str | None = None,
                   n: int = 20) -> list[dict[str, Any]]:
    """The best ``n`` rows of a stored ranking (the most recent one matching the filters)."""
    where, params = [], []
    for col, val in (("sae_id", sae), ("source", source), ("token_set", token_set)):
        if val is not None:
            where.append(f"{col}=?")
            params.append(val)
    sql = "SELECT * FROM latent_ranking" + (" WHERE " + " AND ".join(where) if where else "")
    rows = db.query(sql + " ORDER BY created DESC, rank ASC", params)
    if not rows:
        return []
    key = (rows[0]["sae_id"], rows[0]["base"], rows[0]["source"], rows[0]["token_set"])
    same = [r for r in rows if (r["sae_id"], r["base"], r["source"], r["token_set"]) == key]
    same.sort(key=lambda r: r["rank"])
    for r in same:
        r["deltas"] = json.loads(r["deltas"])
        r["misaligned"] = json.loads(r["misaligned"])
    return same[:n]


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


def answer_items(db: Any, label: str, limit: int | None = None, sampling_hash: str | None = None
                 ) -> list[list[dict[str, str]]]:
    """Chats (prompt + the model's own answer) from the ``generations`` table for ``label``.

    A label may hold answers of several conditions (e.g. steering tags); ``sampling_hash`` picks one,
    and without it a label with several is refused rather than mixed.
    """
    hashes = [r["sampling_hash"] for r in db.query(
        "SELECT DISTINCT sampling_hash FROM generations WHERE model=?", (label,))]
    if sampling_hash is None and len(hashes) > 1:
        raise EmkitError(f"{label!r} has answers from {len(hashes)} sampling conditions: {hashes}",
                         hint="choose one with DiffConfig.sampling_hash / --answers-hash")
    rows = db.query("SELECT prompt, system, answer FROM generations WHERE model=? AND answer != '' "
                    "AND (? IS NULL OR sampling_hash=?) ORDER BY question_id, paraphrase, sample",
                    (label, sampling_hash, sampling_hash))
    out = []
    for r in rows[:limit]:
        msgs = [{"role": "system", "content": r["system"]}] if r["system"] else []
        out.append(msgs + [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}])
    return out


def _n_stored(db: Any, label: str, sid: str, source: str, token_set: str) -> int:
    return db.query("SELECT COUNT(*) AS n FROM latent_stats WHERE model=? AND sae_id=? AND source=? AND token_set=?",
                    (label, sid, source, token_set))[0]["n"]


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
        rows = [] if force else run.db.query(
            "SELECT latent, mean_act, firing_rate, n_tokens FROM latent_stats "
            "WHERE model=? AND sae_id=? AND source=? AND token_set=?", (label, sid, source, ts))
        if len(rows) == sae.num_latents:
            out[ts] = LatentStats.from_rows(rows, sae.num_latents)
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
        run.db.insert("latent_stats", st.rows(model=label, sae_id=sid, source=source, token_set=ts), replace=True)
        out[ts] = st
    return out


def diff_run(run: Any, sae: Any, models: Mapping[str, Any], base: str, *, questions: Sequence[Any] | None = None,
             data: Sequence[Any] | None = None, data_name: str = "data", misaligned: Sequence[str] | None = None,
             cfg: DiffConfig | None = None, layer: int | None = None, progress: bool = True
             ) -> dict[tuple[str, str], Ranking]:
    """Encode every model on the same inputs, rank latents, store stats and rankings in ``run.db``.

    ``models`` maps labels to a model spec (str, loaded with :func:`emkit.models.load_model`), a
    ``(model, tokenizer)`` pair, or a function returning one (called when that model's turn comes); ``base`` is the original model's label. Give ``questions`` (eval
    prompts; with ``cfg.answers`` also each model's own answers) or ``data`` (unsupervised mode:
    chats of the fine-tuning set, answer tokens). Returns ``{(source, token_set): Ranking}``.
    """
    cfg = cfg or DiffConfig()
    if base not in models:
        raise EmkitError(f"the base model {base!r} is not among the models {list(models)}")
    if len(models) < 2:
        raise EmkitError("give the base model and at least one fine-tune")
    if (questions is None) == (data is None):
        raise EmkitError("give either evaluation questions or fine-tuning data (unsupervised mode)")
    jobs: list[tuple[str, list[str], Any]] = []  # (source, token sets, items or a per-label item function)
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
    stats: dict[tuple[str, str], dict[str, LatentStats]] = {}
    sid = sae_id(sae)
    for label, spec in models.items():
        cached = all(_n_stored(run.db, label, sid, source, ts) == sae.num_latents
                     for source, token_sets, _ in jobs for ts in token_sets)
        if cached:  # everything is stored: read it back without loading the model
            model, tok = None, None
        elif isinstance(spec, tuple):
            model, tok = spec
        elif callable(spec):
            model, tok = spec()
        else:
            from emkit.models import load_model

            model, tok = load_model(spec)
        for source, token_sets, items in jobs:
            its = items(label) if callable(items) else items
            got = model_stats(run, sae, model, tok, label, its, source=source, token_sets=token_sets, layer=layer,
                              cfg=cfg, progress=progress)
            for ts, st in got.items():
                stats.setdefault((source, ts), {})[label] = st
        del model
    out: dict[tuple[str, str], Ranking] = {}
    for (source, ts), by_label in stats.items():
        fts = {k: v for k, v in by_label.items() if k != base}
        ranking = diff_models(by_label[base], fts, misaligned)
        with run.db.transaction() as c:
            c.execute("DELETE FROM latent_ranking WHERE sae_id=? AND base=? AND source=? AND token_set=?",
                      (sid, base, source, ts))
        run.db.insert("latent_ranking", ranking_rows(ranking, sae=sid, base=base, source=source, token_set=ts,
                                                     n=max(cfg.top_n, 200)), replace=True)
        out[(source, ts)] = ranking
    return out
