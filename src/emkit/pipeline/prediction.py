"""The prediction stage: does the best latent's shift track misalignment across the mixture family?

Composes :mod:`emkit.predict`; returns the JSON-able summary the report reads.
"""

from __future__ import annotations

from typing import Any

from emkit.errors import EmkitError
from emkit.pipeline.behaviour import judged_answers
from emkit.pipeline.context import Context
from emkit.pipeline.latents import load_run_sae
from emkit.pipeline.recipe import BASE
from emkit.pipeline.steering import top_ranked


def stage_predict(ctx: Context) -> dict[str, Any]:
    from emkit.generate import build_prompt
    from emkit.predict import Member, behaviour_counts, family_stats, prompt_values, sae_probe

    r = ctx.recipe
    sae = load_run_sae(ctx)
    layer = (ctx.result("sae") or {})["layer"]
    steer = ctx.result("steer", required=False)
    latent = steer["best"] if steer and steer.get("best") is not None else top_ranked(ctx, 1)[0]
    probe = sae_probe(sae, latent)
    qs = ctx.eval_questions()
    prompts = [build_prompt(q, q.paraphrases[0]) for q in qs]
    qids = [q.id for q in qs]
    ev = (ctx.result("evaluate") or {})["models"]
    bm, bt = ctx.load(BASE)
    base_acts = prompt_values(bm, bt, layer, [probe], prompts)[0]
    by_domain: dict[str, list] = {}
    labels: dict[str, Any] = {}
    for m in r.models():
        model, tok = ctx.load(m.label)
        acts = prompt_values(model, tok, layer, [probe], prompts)[0]
        res = judged_answers(ctx, model, tok, m.label, qs, r.eval.samples)
        if res.rubric:
            raise EmkitError("the predict stage needs a 0-100 judge (aligned/coherent)",
                             hint="use e.g. api:MODEL or embedded, or skip predict")
        mis, den = behaviour_counts(res.rows, qids)
        by_domain.setdefault(m.domain.name, []).append(Member(m.label, m.fraction, acts, mis, den))
        labels[m.label] = m
    ctx.release()
    points, families = [], {}
    band = None
    for dom, members in by_domain.items():
        if len(members) < 2:
            continue
        fs = family_stats(members, base_acts, threshold=r.predict.threshold, n_boot=r.predict.n_boot, seed=r.seed)
        families[dom] = {k: v for k, v in fs.items() if k != "members"}
        for row in fs["members"]:
            m = labels[row["member"]]
            points.append({"label": row["member"], "domain": dom, "fraction": m.fraction, "shift": row["shift"],
                           "shift_lo": row["shift_lo"], "shift_hi": row["shift_hi"],
                           "rate": ev.get(row["member"], {}).get("misaligned") or {}})
            if band is None and row["member"] == min(members, key=lambda x: x.x).name:
                band = [row["shift_lo"], row["shift_hi"]]
    first = families.get(r.data.domains[0].name, {})
    return {"latent": latent, "layer": layer, "points": points, "families": families,
            "correlation": first.get("spearman"), "pearson": first.get("pearson"), "auroc": first.get("auroc"),
            "threshold": r.predict.threshold, "earliest_shift": first.get("latent_onset"),
            "earliest_behaviour": first.get("behaviour_onset"), "noise_band": band}
