"""The steering stage: causal screen of the top diffed latents, then a dose-response sweep of the best.

Composes :mod:`emkit.steer` and :mod:`emkit.directions`; returns the JSON-able summary the report reads.
"""

from __future__ import annotations

from typing import Any

from emkit.errors import EmkitError
from emkit.pipeline.behaviour import most_misaligned
from emkit.pipeline.context import Context
from emkit.pipeline.latents import load_run_sae
from emkit.pipeline.recipe import BASE


def steer_rate(row: dict | None, key: str = "misaligned") -> dict[str, Any]:
    """A ``steering`` table row's rate as ``{k, n, value, lo, hi}``."""
    if not row:
        return {"k": 0, "n": 0, "value": None, "lo": None, "hi": None}
    if key == "misaligned":
        n, v = row.get("n_mis") or 0, row.get("misaligned")
        return {"k": int(round((v or 0) * n)), "n": n, "value": v, "lo": row.get("mis_lo"), "hi": row.get("mis_hi")}
    n, v = row.get("n") or 0, row.get("coherent")
    return {"k": int(round((v or 0) * n)), "n": n, "value": v, "lo": row.get("coh_lo"), "hi": row.get("coh_hi")}


def top_ranked(ctx: Context, n: int) -> list[int]:
    return [r["latent"] for r in (ctx.result("diff") or {}).get("ranking", [])[:n]]


def stage_steer(ctx: Context) -> dict[str, Any]:
    from emkit.directions import from_sae
    from emkit.steer import Arm, causal_screen, condition, sweep

    r = ctx.recipe
    st = r.steer
    sae = load_run_sae(ctx)
    layer = (ctx.result("sae") or {})["layer"]
    target, why = most_misaligned(ctx)
    qs = ctx.questions(r.eval.questions, st.n_questions or r.eval.n_questions)
    latents = top_ranked(ctx, max(1, st.screen))
    cands = [from_sae(sae, lat) for lat in latents]
    bm, bt = ctx.load(BASE)
    tm, tt = ctx.load(target)
    base_arm, tgt_arm = Arm(bm, bt, BASE), Arm(tm, tt, target)
    kw = dict(samples=st.samples, positions=st.positions, progress=ctx.progress)
    screen_rows = causal_screen(ctx.run, base_arm, cands, qs, ctx.judge, r.eval.sampling, layer=layer,
                                alpha=st.screen_alpha, misaligned=tgt_arm, n_random=1 if st.random_control else 0,
                                seed=r.seed, **kw)

    def cond(arm: Arm, d: Any, alpha: float, purpose: str) -> dict:
        """A screened condition's stored rates (answers and judgments are read back, not redone)."""
        return condition(ctx.run, arm, layer, d, alpha, qs, ctx.judge, r.eval.sampling, purpose=purpose,
                         scale=scale, **kw)

    from emkit.directions import random_direction
    from emkit.steer import resolve_scale

    scale = resolve_scale(bm, layer, None, bt)  # the screen measures strength on the base model
    u0 = cond(base_arm, cands[0], 0.0, "screen")
    t0 = cond(tgt_arm, cands[0], 0.0, "screen")
    screen, control = [], {}
    for row in screen_rows:
        if row["control"]:
            d = random_direction(cands[0].dim, r.seed, cands[0].norm, layer=layer)
            if d.digest() != row["digest"]:
                raise EmkitError("cannot rebuild the screen's random control direction", hint="a bug: please report")
        else:
            d = cands[latents.index(row["latent"])]
        purpose = "control" if row["control"] else "screen"
        p, m = cond(base_arm, d, st.screen_alpha, purpose), cond(tgt_arm, d, -st.screen_alpha, purpose)
        rec = {"latent": row["latent"], "plus": steer_rate(p), "plus_coherent": steer_rate(p, "coherent"),
               "minus": steer_rate(m), "minus_coherent": steer_rate(m, "coherent"), "effect": row["score"],
               "rank": row["rank"]}
        if row["control"]:
            control = rec
        else:
            screen.append(rec)
    ranked = [s for s in screen if s["effect"] is not None]
    best = (max(ranked, key=lambda s: s["effect"]) if ranked else screen[0])["latent"]
    d = cands[latents.index(best)]
    mags = sorted({abs(a) for a in st.alphas} | {0.0})
    plus = sweep(ctx.run, bm, bt, layer, d, mags, qs, ctx.judge, r.eval.sampling, BASE, scale=scale,
                 max_incoherence=st.max_incoherence, **kw)
    minus = sweep(ctx.run, tm, tt, layer, d, [-a for a in mags], qs, ctx.judge, r.eval.sampling, target,
                  scale=scale, max_incoherence=st.max_incoherence, **kw)
    pts = [{"alpha": abs(row["alpha"]), "sign": sign, "model": lab, "misaligned": steer_rate(row),
            "coherent": steer_rate(row, "coherent")}
           for sign, lab, res in (("+", BASE, plus), ("-", target, minus)) for row in res["rows"]]
    usable = {"+": plus["usable"].get("positive"), "-": (lambda a: None if a is None else abs(a))(
        minus["usable"].get("negative"))}
    ctx.release()
    from emkit.pipeline.positive import steer_positive_control

    pc = steer_positive_control(ctx, sae, layer, qs, scale)
    return {"layer": layer, "scale": scale, "positions": st.positions, "screen_alpha": st.screen_alpha,
            "target": target, "target_why": why, "max_incoherence": st.max_incoherence,
            "baseline": {"plus": steer_rate(u0), "plus_coherent": steer_rate(u0, "coherent"),
                         "minus": steer_rate(t0), "minus_coherent": steer_rate(t0, "coherent")},
            "screen": screen, "control": control, "best": best, "sweep": pts, "usable": usable,
            "n_questions": len(qs), "samples": st.samples, "positive_control": pc}
