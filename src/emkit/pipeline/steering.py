"""The steering stage: causal screen of the top diffed latents, then a dose-response sweep of the best.

Composes :mod:`emkit.steer` and :mod:`emkit.directions`; returns its :mod:`emkit.stage_results` record,
which the report reads.
"""

from __future__ import annotations

from typing import Any

from emkit.errors import EmkitError
from emkit.pipeline.behaviour import most_misaligned
from emkit.pipeline.context import Context
from emkit.pipeline.latents import load_run_sae
from emkit.pipeline.positive import steer_positive_control
from emkit.pipeline.recipe import BASE
from emkit.stage_results import SteerResult
from emkit.steer.tables import row_rate


def top_ranked(ctx: Context, n: int) -> list[int]:
    return [r["latent"] for r in ctx.result("diff").ranking[:n]]


def _screened(ctx: Context, setup: Any, arms: tuple[Any, Any], cands: list, latents: list[int], layer: int,
              scale: float) -> tuple[list[dict], dict, dict]:
    """Screen the candidates; read back each screened condition's stored rates (answers and judgments
    are not redone). Returns the latents' records, the control's and the unsteered baseline's."""
    from emkit.directions import random_direction
    from emkit.steer import condition, screen

    st, seed = ctx.recipe.steer, ctx.recipe.seed
    base_arm, tgt_arm = arms
    rows = screen(setup, base_arm, cands, layer=layer, alpha=st.screen_alpha, misaligned=tgt_arm,
                  n_random=1 if st.random_control else 0, seed=seed, positions=st.positions)

    def cond(arm: Any, d: Any, alpha: float, purpose: str) -> dict:
        return condition(setup, arm, layer, d, alpha, positions=st.positions, scale=scale, purpose=purpose)

    u0, t0 = cond(base_arm, cands[0], 0.0, "screen"), cond(tgt_arm, cands[0], 0.0, "screen")
    baseline = {"plus": row_rate(u0), "plus_coherent": row_rate(u0, "coherent"),
                "minus": row_rate(t0), "minus_coherent": row_rate(t0, "coherent")}
    records, control = [], {}
    for row in rows:
        if row["control"]:
            d = random_direction(cands[0].dim, seed, cands[0].norm, layer=layer)
            if d.digest() != row["digest"]:
                raise EmkitError("cannot rebuild the screen's random control direction", hint="a bug: please report")
        else:
            d = cands[latents.index(row["latent"])]
        purpose = "control" if row["control"] else "screen"
        p, m = cond(base_arm, d, st.screen_alpha, purpose), cond(tgt_arm, d, -st.screen_alpha, purpose)
        rec = {"latent": row["latent"], "plus": row_rate(p), "plus_coherent": row_rate(p, "coherent"),
               "minus": row_rate(m), "minus_coherent": row_rate(m, "coherent"), "effect": row["score"],
               "rank": row["rank"]}
        if row["control"]:
            control = rec
        else:
            records.append(rec)
    return records, control, baseline


def _swept(ctx: Context, setup: Any, arms: tuple[Any, Any], d: Any, layer: int, scale: float
           ) -> tuple[list[dict], dict[str, Any]]:
    """Dose-response of ``d``: + on the base model, − on the target. Returns the points and usable strengths."""
    from emkit.steer import dose_response

    st = ctx.recipe.steer
    mags = sorted({abs(a) for a in st.alphas} | {0.0})
    kw = dict(positions=st.positions, scale=scale, max_incoherence=st.max_incoherence)
    plus = dose_response(setup, arms[0], layer, d, mags, **kw)
    minus = dose_response(setup, arms[1], layer, d, [-a for a in mags], **kw)
    pts = [{"alpha": abs(row["alpha"]), "sign": sign, "model": arm.label, "misaligned": row_rate(row),
            "coherent": row_rate(row, "coherent")}
           for sign, arm, res in (("+", arms[0], plus), ("-", arms[1], minus)) for row in res["rows"]]
    neg = minus["usable"].get("negative")
    return pts, {"+": plus["usable"].get("positive"), "-": None if neg is None else abs(neg)}


def stage_steer(ctx: Context) -> SteerResult:
    from emkit.directions import from_sae
    from emkit.pipeline.behaviour import eval_setup
    from emkit.steer import Arm, resolve_scale

    r = ctx.recipe
    st = r.steer
    sae = load_run_sae(ctx)
    layer = ctx.result("sae").layer
    target, why = most_misaligned(ctx)
    setup = eval_setup(ctx, ctx.questions(r.eval.questions, st.n_questions or r.eval.n_questions), st.samples)
    latents = top_ranked(ctx, max(1, st.screen))
    cands = [from_sae(sae, lat) for lat in latents]
    bm, bt = ctx.load(BASE)
    tm, tt = ctx.load(target)
    arms = (Arm(bm, bt, BASE), Arm(tm, tt, target))
    scale = resolve_scale(bm, layer, None, bt)  # the screen measures strength on the base model
    screen, control, baseline = _screened(ctx, setup, arms, cands, latents, layer, scale)
    ranked = [s for s in screen if s["effect"] is not None]
    best = (max(ranked, key=lambda s: s["effect"]) if ranked else screen[0])["latent"]
    pts, usable = _swept(ctx, setup, arms, cands[latents.index(best)], layer, scale)
    ctx.release()
    pc = steer_positive_control(ctx, setup, sae, layer, scale)
    return SteerResult(layer=layer, scale=scale, positions=st.positions, screen_alpha=st.screen_alpha, target=target,
                       target_why=why, max_incoherence=st.max_incoherence, baseline=baseline, screen=screen,
                       control=control, best=best, sweep=pts, usable=usable, n_questions=len(setup.questions),
                       samples=st.samples, positive_control=pc)
