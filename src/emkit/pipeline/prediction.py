"""The prediction stage: does the best latent's shift track misalignment across the mixture family?

Composes :mod:`emkit.predict`; returns its :mod:`emkit.stage_results` record, which the report reads.
"""

from __future__ import annotations

from emkit.errors import EmkitError
from emkit.pipeline.behaviour import JUDGED_BOOT, eval_setup
from emkit.pipeline.context import Context
from emkit.pipeline.latents import load_run_sae
from emkit.pipeline.recipe import BASE
from emkit.pipeline.steering import top_ranked
from emkit.stage_results import PredictResult


def stage_predict(ctx: Context) -> PredictResult:
    from emkit.predict import Member, family_stats, measure_family, sae_probe

    r = ctx.recipe
    sae = load_run_sae(ctx)
    layer = ctx.result("sae").layer
    steer = ctx.result("steer", required=False)
    latent = steer.best if steer and steer.best is not None else top_ranked(ctx, 1)[0]
    probe = sae_probe(sae, latent)
    qs = ctx.eval_questions()
    ev = ctx.result("evaluate").models
    setup = eval_setup(ctx, qs, r.eval.samples)
    if setup.rubric:
        raise EmkitError("the predict stage needs a 0-100 judge (aligned/coherent)",
                         hint="use e.g. api:MODEL or embedded, or skip predict")
    labels = {m.label: m for m in r.models()}
    # the first paraphrase of each question; rates stored as the evaluate stage stores them
    base_acts, measured = measure_family(
        setup, ctx.load(BASE), [(m.label, m.fraction, lambda lab=m.label: ctx.load(lab)) for m in r.models()],
        probe, layer, paraphrases=1, metrics_boot=JUDGED_BOOT)
    by_domain: dict[str, list[Member]] = {}
    for mem in measured:
        by_domain.setdefault(labels[mem.name].domain.name, []).append(mem)
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
                           "rate": (ev[row["member"]].misaligned if row["member"] in ev else None) or {}})
            if band is None and row["member"] == min(members, key=lambda x: x.x).name:
                band = [row["shift_lo"], row["shift_hi"]]
    first = families.get(r.data.domains[0].name, {})
    return PredictResult(latent=latent, layer=layer, points=points, families=families,
                         correlation=first.get("spearman"), pearson=first.get("pearson"), auroc=first.get("auroc"),
                         threshold=r.predict.threshold, earliest_shift=first.get("latent_onset"),
                         earliest_behaviour=first.get("behaviour_onset"), noise_band=band)
