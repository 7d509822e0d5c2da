"""The diff stage: rank latents on shared inputs (default) or each model's own answers, rank latents for
the positive control, and project every fine-tune on the positive control's top latents.

Composes :mod:`emkit.diff` and :mod:`emkit.projection`; the stage function in
:mod:`emkit.pipeline.latents` only calls :func:`run_diff`.
"""

from __future__ import annotations

from typing import Any

from emkit.pipeline.context import Context
from emkit.pipeline.recipe import BASE
from emkit.stage_results import SHARED_ONLY, DiffPass, DiffResult, PersonaRanking, Projection


def own_answers(ctx: Context, label: str, questions: list) -> list[list[dict[str, str]]]:
    """The model's own sampled answers to the eval questions (eval sampling, no steering) as chats."""
    from emkit.diff import answer_items
    from emkit.generate import sampling_hash

    return answer_items(ctx.run.db, label, sampling_hash=sampling_hash(ctx.recipe.eval.sampling),
                        questions=[q.id for q in questions])


def persona_ranking(stats: dict[str, Any], pos: str, ctrl: str | None, top_n: int) -> tuple[PersonaRanking, Any]:
    """The positive control's own ranking (:func:`emkit.diff_stats.control_ranking`) against the base
    model and its correct-data control: as the stage summary holds it, and the full ranking."""
    from emkit.diff import control_ranking

    rk = control_ranking(stats[BASE], (pos, stats[pos]), (ctrl, stats[ctrl]) if ctrl else None)
    against = f"{BASE} and {ctrl}" if ctrl else BASE
    return PersonaRanking(label=pos, control=ctrl, ranked_against=against, ranking=rk.top(top_n)), rk


def _rank_and_store(ctx: Context, sae: Any, stats: dict[str, Any], source: str, misaligned: list[str]
                    ) -> tuple[list[dict], PersonaRanking | None]:
    """Narrow ranking (stored under ``source``) and the positive control's (under ``source#LABEL``)."""
    from emkit.diff import diff_models, sae_id, store_ranking

    r = ctx.recipe
    d = r.diff
    sid = sae_id(sae)
    narrow = {m.label: stats[m.label] for m in r.models()}
    rankings = [(source, diff_models(stats[BASE], narrow, misaligned))]
    pc = None
    arms = r.control_models()
    if arms:
        pc, pc_rank = persona_ranking(stats, arms[0].label, arms[1].label, d.top_n)
        rankings.append((f"{source}#{arms[0].label}", pc_rank))
    for src, rk in rankings:
        store_ranking(ctx.run.db, rk, sae=sid, base=BASE, source=src, token_set=d.tokens, n=max(d.top_n, 200))
    return rankings[0][1].top(d.top_n), pc


def own_diff(ctx: Context, sae: Any, layer: int, qs: list, misaligned: list[str]) -> DiffPass:
    """Each model teacher-forced on its own sampled answers (or, for prompt tokens, the eval prompts)."""
    from emkit.config import config_hash
    from emkit.diff import DiffConfig, collect_stats, eval_items

    r = ctx.recipe
    d = r.diff
    cfg = DiffConfig(token_sets=[d.tokens], max_length=d.max_length, batch_size=d.batch_size, top_n=d.top_n)
    if d.tokens == "answer":
        source = f"eval-answers:{config_hash({'q': [q.id for q in qs], 's': r.eval.sampling, 'n': r.eval.samples})}"
    else:
        source = f"eval:{config_hash([q.id for q in qs])}"
    n_items: dict[str, int] = {}

    def items(lab: str) -> list:
        its = own_answers(ctx, lab, qs) if d.tokens == "answer" else eval_items(qs)
        n_items[lab] = len(its)
        return its

    models = {lab: (lambda lab=lab: ctx.load(lab)) for lab in r.labels()}
    stats = collect_stats(ctx.run, sae, models, [(source, [d.tokens], items)], cfg=cfg, layer=layer,
                          progress=ctx.progress)[(source, d.tokens)]
    ctx.release()
    ranking, pc = _rank_and_store(ctx, sae, stats, source, misaligned)
    return DiffPass(inputs="own", source=source, ranking=ranking, positive_control=pc, n_items=n_items,
                    n_tokens={lab: st.n_tokens for lab, st in stats.items()}, absent=SHARED_ONLY)


def shared_diff(ctx: Context, sae: Any, layer: int, qs: list, misaligned: list[str]) -> DiffPass:
    """Every model teacher-forced on the same texts: the eval prompts plus the base model's and the
    positive control's answers; then the projection on the positive control's top latents."""
    from emkit.diff import DiffConfig, eval_items, sae_id, store_stats, stored_stats
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
    pools = {lab: own_answers(ctx, lab, qs) for lab in pool_labels}
    prompts = eval_items(qs) if d.tokens != "answer" else []  # prompts alone hold no answer tokens
    items = shared_items(prompts, list(pools.values()))
    source = shared_source(items)
    sid = sae_id(sae)
    cfg = DiffConfig(token_sets=[d.tokens], max_length=d.max_length, batch_size=d.batch_size, top_n=d.top_n)
    labels = r.labels()
    stats = {lab: stored_stats(ctx.run.db, lab, sid, source, d.tokens, sae.num_latents) for lab in labels}
    full: dict[str, Any] = {}

    def compute(lab: str) -> Any:
        model, tok = ctx.load(lab)
        ts = text_sums(sae, model, tok, layer, items, d.tokens, cfg, progress=ctx.progress, label=lab)
        st = ts.stats()
        store_stats(ctx.run.db, st, lab, sid, source, d.tokens)
        stats[lab] = st
        return ts

    for lab in (BASE, pos, ctrl):  # the positive control's ranking needs these first
        if lab and stats[lab] is None:
            full[lab] = compute(lab)
    projection = None
    if pos:
        latents = [row["latent"] for row in persona_ranking(stats, pos, ctrl, d.top_n)[0].ranking[: d.projection_latents]]
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
        projection = Projection(latents=latents, reference=pos, rows=rows, n_boot=d.n_boot)
    for lab in labels:
        if stats[lab] is None:
            compute(lab)
    ctx.release()
    ranking, pc = _rank_and_store(ctx, sae, stats, source, misaligned)
    return DiffPass(inputs="shared", source=source, ranking=ranking, positive_control=pc, projection=projection,
                    n_items={lab: len(items) for lab in labels}, n_tokens={lab: st.n_tokens for lab, st in stats.items()},
                    shared_inputs={"prompts": len(prompts), "answers": {lab: len(p) for lab, p in pools.items()},
                                   "texts": len(items)})


def run_diff(ctx: Context, sae: Any, layer: int, misaligned: list[str], why: str) -> DiffResult:
    """The diff stage's summary: the leading inputs' results at the top level (``shared`` unless
    ``diff.inputs`` is ``own``), the own-answer results under ``own`` when both were computed."""
    from emkit.diff import sae_id

    d = ctx.recipe.diff
    qs = ctx.eval_questions()
    shared = shared_diff(ctx, sae, layer, qs, misaligned) if d.inputs in ("shared", "both") else None
    own = own_diff(ctx, sae, layer, qs, misaligned) if d.inputs in ("own", "both") else None
    lead = shared or own
    return DiffResult(**lead.values(), tokens=d.tokens, misaligned=misaligned, why=why, sae_id=sae_id(sae),
                      own=own if shared and own else None, absent=lead.absent | ({"own"} if not (shared and own) else set()))
