"""The positive-control arm's part of the steering stage: screen its top latent by steering.

(Its evaluation is :func:`emkit.pipeline.behaviour.evaluate_positive_control`.) The arm (``recipe.positive_control``) is a fine-tune on overtly misaligned answers (``persona``) and
its correct-data control (``persona-control``); both are trained by the finetune stage with the
narrow family. Verdicts come from :mod:`emkit.positive_control`.
"""

from __future__ import annotations

from typing import Any

from emkit.eval_setup import EvalSetup
from emkit.pipeline.context import Context
from emkit.pipeline.recipe import BASE
from emkit.stage_results import SteerPositive
from emkit.steer.tables import row_rate


def _rates(row: dict | None) -> dict[str, Any]:
    return {"misaligned": row_rate(row), "coherent": row_rate(row, "coherent")}


def steer_positive_control(ctx: Context, setup: EvalSetup, sae: Any, layer: int, scale: float
                          ) -> SteerPositive | None:
    """Screen the persona's top latent: + alpha on the base model, − alpha on the persona model, beside
    a random direction of the same norm (same strength, questions and samples as the main screen)."""
    from emkit.directions import from_sae, random_direction
    from emkit.positive_control import steer_effect
    from emkit.steer import Arm, condition, screen

    r = ctx.recipe
    st = r.steer
    arms = r.control_models()
    pc_rank = ctx.result("diff").positive_control
    rank = (pc_rank.ranking if pc_rank else None) or []
    if not arms or not rank:
        return None
    latent = rank[0]["latent"]
    d = from_sae(sae, latent)
    bm, bt = ctx.load(BASE)
    pm, pt = ctx.load(arms[0].label)
    base_arm, pos_arm = Arm(bm, bt, BASE), Arm(pm, pt, arms[0].label)
    screen(setup, base_arm, [d], layer=layer, alpha=st.screen_alpha, misaligned=pos_arm,
           n_random=1 if st.random_control else 0, seed=r.seed, positions=st.positions)

    def cond(arm: Any, direction: Any, alpha: float, purpose: str) -> dict[str, Any]:
        return _rates(condition(setup, arm, layer, direction, alpha, positions=st.positions, scale=scale,
                                purpose=purpose))

    conds = {"base_zero": cond(base_arm, d, 0.0, "screen"), "model_zero": cond(pos_arm, d, 0.0, "screen"),
             "latent_plus": cond(base_arm, d, st.screen_alpha, "screen"),
             "latent_minus": cond(pos_arm, d, -st.screen_alpha, "screen")}
    if st.random_control:
        rd = random_direction(d.dim, r.seed, d.norm, layer=layer)
        conds["random_plus"] = cond(base_arm, rd, st.screen_alpha, "control")
        conds["random_minus"] = cond(pos_arm, rd, -st.screen_alpha, "control")
    mis = {k: v["misaligned"] for k, v in conds.items()}
    plus = steer_effect(mis["latent_plus"], mis.get("random_plus"), mis["base_zero"], +1)
    minus = steer_effect(mis["latent_minus"], mis.get("random_minus"), mis["model_zero"], -1)
    coh0 = conds["base_zero"]["coherent"].get("value")
    coh = conds["latent_plus"]["coherent"].get("value")
    plus["usable"] = None if coh0 is None or coh is None else bool(coh0 - coh <= st.max_incoherence)
    ctx.release()
    return SteerPositive(latent=latent, model=arms[0].label, alpha=st.screen_alpha, plus=plus, minus=minus, **conds,
                         absent=frozenset() if st.random_control else frozenset({"random_plus", "random_minus"}))
