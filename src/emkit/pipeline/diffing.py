"""The diff stage: rank latents on shared inputs (default) or each model's own answers, rank latents for
the positive control, and project every fine-tune on the positive control's top latents.

Composes :mod:`emkit.diff` and :mod:`emkit.projection`; the stage function in
:mod:`emkit.pipeline.latents` only calls :func:`run_diff`.
"""

from __future__ import annotations

from typing import Any

from emkit.pipeline.context import Context
from emkit.pipeline.recipe import BASE


def _stored(db: Any, label: str, sid: str, source: str, token_set: str, n: int) -> Any:
    from emkit.diff import LatentStats

    rows = db.query("SELECT latent, mean_act, firing_rate, n_tokens FROM latent_stats WHERE model=? AND sae_id=? "
                    "AND source=? AND token_set=?", (label, sid, source, token_set))
    return LatentStats.from_rows(rows, n) if len(rows) == n else None


def persona_ranking(stats: dict[str, Any], pos: str, ctrl: str | None, top_n: int) -> dict[str, Any]:
    """The positive control's own ranking: latents the persona raises beyond both the base model and its
    correct-data control (score: the smaller of the two increases), with each arm's delta vs base."""
    import torch

    from emkit.diff import Ranking

    d_base = (stats[pos].mean - stats[BASE].mean).double()
    score = torch.minimum(d_base, (stats[pos].mean - stats[ctrl].mean).double()) if ctrl else d_base
    order = sorted(range(len(score)), key=lambda i: (-float(score[i]), i))
    deltas = {lab: (stats[lab].mean - stats[BASE].mean).double() for lab in (pos, ctrl) if lab}
    rk = Ranking(order, score, deltas, [pos], stats[BASE], {lab: stats[lab] for lab in deltas})
    against = f"{BASE} and {ctrl}" if ctrl else BASE
    return {"label": pos, "control": ctrl, "ranked_against": against, "ranking": rk.top(top_n), "ranking_obj": rk}


def _rank_and_store(ctx: Context, sae: Any, stats: dict[str, Any], source: str, misaligned: list[str]
                    ) -> tuple[list[dict], dict[str, Any] | None]:
    """Narrow ranking (stored under ``source``) and the positive control's (under ``source#LABEL``)."""
    from emkit.diff import diff_models, ranking_rows, sae_id

    r = ctx.recipe
    d = r.diff
    sid = sae_id(sae)
    narrow = {m.label: stats[m.label] for m in r.models()}
    rankings = [(source, BASE, diff_models(stats[BASE], narrow, misaligned))]
    pc = None
    arms = r.control_models()
    if arms:
        pc = persona_ranking(stats, arms[0].label, arms[1].label, d.top_n)
        rankings.append((f"{source}#{arms[0].label}", BASE, pc.pop("ranking_obj")))
    for src, base, rk in rankings:
        with ctx.run.db.transaction() as c:
            c.execute("DELETE FROM latent_ranking WHERE sae_id=? AND base=? AND source=? AND token_set=?",
                      (sid, base, src, d.tokens))
        ctx.run.db.insert("latent_ranking", ranking_rows(rk, sae=sid, base=base, source=src, token_set=d.tokens,
                                                         n=max(d.top_n, 200)), replace=True)
    return rankings[0][2].top(d.top_n), pc


def own_diff(ctx: Context, sae: Any, layer: int, qs: list, misaligned: list[str]) -> dict[str, Any]:
    """Each model teacher-forced on its own sampled answers (or, for prompt tokens, the eval prompts)."""
    from emkit.config import config_hash
    from emkit.diff import DiffConfig, eval_items, model_stats, sae_id
    from emkit.pipeline.latents import answer_chats

    r = ctx.recipe
    d = r.diff
    cfg = DiffConfig(token_sets=[d.tokens], max_length=d.max_length, batch_size=d.batch_size, top_n=d.top_n)
    if d.tokens == "answer":
        source = f"eval-answers:{config_hash({'q': [q.id for q in qs], 's': r.eval.sampling, 'n': r.eval.samples})}"
    else:
        source = f"eval:{config_hash([q.id for q in qs])}"
    stats, n_items = {}, {}
    sid = sae_id(sae)
    for lab in r.labels():
        items = answer_chats(ctx, lab, qs) if d.tokens == "answer" else eval_items(qs)
        n_items[lab] = len(items)
        stats[lab] = _stored(ctx.run.db, lab, sid, source, d.tokens, sae.num_latents)
        if stats[lab] is None:  # not stored yet: load the model and encode
            model, tok = ctx.load(lab)
            stats[lab] = model_stats(ctx.run, sae, model, tok, lab, items, source=source, token_sets=[d.tokens],
                                     layer=layer, cfg=cfg, progress=ctx.progress)[d.tokens]
    ctx.release()
    ranking, pc = _rank_and_store(ctx, sae, stats, source, misaligned)
    return {"inputs": "own", "source": source, "ranking": ranking, "positive_control": pc, "n_items": n_items,
            "n_tokens": {lab: st.n_tokens for lab, st in stats.items()}}


def shared_diff(ctx: Context, sae: Any, layer: int, qs: list, misaligned: list[str]) -> dict[str, Any]:
    """Every model teacher-forced on the same texts: the eval prompts plus the base model's and the
    positive control's answers; then the projection on the positive control's top latents."""
    from emkit.diff import DiffConfig, eval_items, sae_id
    from emkit.pipeline.latents import answer_chats
    from emkit.projection import (
        cached_text_sums,
        projection_rows,
        shared_items,
        shared_source,
        store_projection,
        text_sums,
    )

    r = ctx.recipe
    d = r.diff
    arms = r.control_models()
    pos, ctrl = (arms[0].label, arms[1].label) if arms else (None, None)
    pool_labels = [BASE] + ([pos] if pos else [])
    pools = {lab: answer_chats(ctx, lab, qs) for lab in pool_labels}
    prompts = eval_items(qs) if d.tokens != "answer" else []  # prompts alone hold no answer tokens
    items = shared_items(prompts, list(pools.values()))
    source = shared_source(items)
    sid = sae_id(sae)
    cfg = DiffConfig(token_sets=[d.tokens], max_length=d.max_length, batch_size=d.batch_size, top_n=d.top_n)
    labels = r.labels()
    stats = {lab: _stored(ctx.run.db, lab, sid, source, d.tokens, sae.num_latents) for lab in labels}
    full: dict[str, Any] = {}

    def compute(lab: str) -> Any:
        model, tok = ctx.load(lab)
        ts = text_sums(sae, model, tok, layer, items, d.tokens, cfg, progress=ctx.progress, label=lab)
        st = ts.stats()
        ctx.run.db.insert("latent_stats", st.rows(model=lab, sae_id=sid, source=source, token_set=d.tokens),
                          replace=True)
        stats[lab] = st
        return ts

    for lab in (BASE, pos, ctrl):  # the positive control's ranking needs these first
        if lab and stats[lab] is None:
            full[lab] = compute(lab)
    projection = None
    if pos:
        pc_rank = persona_ranking(stats, pos, ctrl, d.top_n)
        pc_rank.pop("ranking_obj")
        latents = [row["latent"] for row in pc_rank["ranking"][: d.projection_latents]]
        fps = ctx.fingerprints()
        cols = {}
        for lab in labels:
            meta = {"source": source, "token_set": d.tokens, "sae": sid, "model": fps.get(lab, ""),
                    "max_length": d.max_length}
            path = ctx.run.path / "diff" / "texts" / f"{lab}.safetensors"
            cols[lab] = cached_text_sums(path, meta, latents, lambda lab=lab: full.pop(lab, None) or compute(lab))
            full.pop(lab, None)
        controls = {m.label: f"{m.domain.name}-wrong0" for m in r.models() if m.fraction > 0}
        controls[pos] = ctrl
        rows = projection_rows(cols, BASE, latents, controls=controls, reference=pos, n_boot=d.n_boot, seed=r.seed)
        store_projection(ctx.run.db, rows, sae=sae, source=source, token_set=d.tokens, base=BASE, latents=latents)
        projection = {"latents": latents, "reference": pos, "rows": rows, "n_boot": d.n_boot}
    for lab in labels:
        if stats[lab] is None:
            compute(lab)
    ctx.release()
    ranking, pc = _rank_and_store(ctx, sae, stats, source, misaligned)
    return {"inputs": "shared", "source": source, "ranking": ranking, "positive_control": pc,
            "projection": projection, "n_items": {lab: len(items) for lab in labels},
            "n_tokens": {lab: st.n_tokens for lab, st in stats.items()},
            "shared_inputs": {"prompts": len(prompts), "answers": {lab: len(p) for lab, p in pools.items()},
                              "texts": len(items)}}


def run_diff(ctx: Context, sae: Any, layer: int, misaligned: list[str], why: str) -> dict[str, Any]:
    """The diff stage's summary: the leading inputs' results at the top level (``shared`` unless
    ``diff.inputs`` is ``own``), the own-answer results under ``own`` when both were computed."""
    from emkit.diff import sae_id

    d = ctx.recipe.diff
    qs = ctx.eval_questions()
    shared = shared_diff(ctx, sae, layer, qs, misaligned) if d.inputs in ("shared", "both") else None
    own = own_diff(ctx, sae, layer, qs, misaligned) if d.inputs in ("own", "both") else None
    lead = shared or own or {}
    out = {**lead, "tokens": d.tokens, "misaligned": misaligned, "why": why, "sae_id": sae_id(sae)}
    if shared and own:
        out["own"] = own
    return out
