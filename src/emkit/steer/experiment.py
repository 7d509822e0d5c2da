"""Steering experiments: judged conditions, dose-response sweeps and the causal screen.

:func:`condition` answers the questions with a steered model, judges the answers and stores the
rates in the ``steering`` table. :func:`dose_response` measures misalignment and coherence per
strength and reports the usable strength; :func:`screen` steers candidate latents + on the base
model and − on a misaligned one, with random directions of the same norm as controls. What is
answered and how it is judged is an :class:`emkit.eval_setup.EvalSetup`; :func:`sweep` and
:func:`causal_screen` are the same experiments with its parts passed one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from emkit.directions import SCALE_METHOD, Direction
from emkit.errors import EmkitError
from emkit.eval_setup import EvalSetup
from emkit.steer.hooks import Positions, layer_index, resolve_scale, steer
from emkit.steer.tables import condition_sampling_hash, rates, steer_tag


@dataclass
class Arm:
    """A model to steer in a sweep or screen: model, tokenizer and the label its answers are stored under."""

    model: Any
    tok: Any
    label: str


def condition(setup: EvalSetup, arm: Arm, layer: int, direction: Direction, alpha: float, *,
              positions: Positions = "all", scale: float | None = None, purpose: str = "sweep") -> dict[str, Any]:
    """Answer, judge and summarise one steering condition; stored in ``steering`` (resumes via the run)."""
    idx = layer_index(arm.model, layer)
    s = resolve_scale(arm.model, idx, scale, arm.tok)
    with steer(arm.model, idx, direction, alpha, positions, scale=s):
        gen = setup.answers(arm.model, arm.tok, arm.label, steer_tag(direction, idx, alpha, positions, s))
    row = dict(label=arm.label, direction=direction.name, digest=direction.digest(), layer=idx, alpha=float(alpha),
               positions=str(positions), scale=s, judge_id=setup.judge.id,
               sampling_hash=condition_sampling_hash(setup.sampling), purpose=purpose,
               **rates(setup.score(gen), setup.rubric))
    setup.run.db.insert("steering", [row], replace=True)
    return row


def usable_strength(rows: Sequence[dict], max_incoherence: float = 0.10, relative: bool = False) -> dict[str, float | None]:
    """Strongest |alpha| on each side whose incoherence, and that of every weaker alpha on that side,
    stays <= ``max_incoherence`` (``relative``: measured as the rise over alpha 0). ``best`` is the
    stronger of the two sides."""
    base = next((r["incoherent"] for r in rows if r["alpha"] == 0), None)
    out: dict[str, float | None] = {}
    for side, sign in (("positive", 1), ("negative", -1)):
        best = None
        for r in sorted((r for r in rows if r["alpha"] * sign > 0), key=lambda r: abs(r["alpha"])):
            inc = r["incoherent"]
            if inc is not None and relative:
                inc = None if base is None else inc - base
            if inc is None or inc > max_incoherence:
                break
            best = r["alpha"]
        out[side] = best
    sides = [a for a in out.values() if a is not None]
    out["best"] = max(sides, key=abs) if sides else None
    return out


def dose_response(setup: EvalSetup, arm: Arm, layer: int | str, direction: Direction, alphas: Sequence[float], *,
                  positions: Positions = "all", scale: float | None = None, max_incoherence: float = 0.10,
                  relative: bool = False) -> dict[str, Any]:
    """Misalignment and coherence (with Wilson intervals) at each strength, plus the usable strength.

    Returns ``{"rows": [...], "usable": {...}, "scale": float, "scale_method": str}``.
    """
    if not alphas:
        raise EmkitError("no steering strengths to sweep", hint="e.g. --alphas -1,-0.5,0,0.5,1")
    idx = layer_index(arm.model, layer)
    s = resolve_scale(arm.model, idx, scale, arm.tok)
    rows = [condition(setup, arm, idx, direction, a, positions=positions, scale=s)
            for a in sorted(set(map(float, alphas)))]
    return {"rows": rows, "usable": usable_strength(rows, max_incoherence, relative), "scale": s,
            "scale_method": "given" if scale is not None else SCALE_METHOD}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def screen(setup: EvalSetup, base: Arm, candidates: Sequence[Direction], *, layer: int, alpha: float,
           misaligned: Arm | None = None, n_random: int = 1, seed: int = 0, positions: Positions = "all") -> list[dict]:
    """Steer each candidate + ``alpha`` on the base model and − ``alpha`` on a misaligned model; rank by effect.

    ``n_random`` random directions with the norm of the first candidate are screened alongside as
    controls. Both sides use the base model's residual scale, so the same vector is added and
    removed. Rows (best first) are stored in ``steering_screen``.
    """
    from emkit.config import config_hash
    from emkit.directions import random_direction

    if not candidates:
        raise EmkitError("no candidate directions to screen", hint="run `emkit diff` first, or give latents")
    if alpha <= 0:
        raise EmkitError(f"the screen's alpha must be positive (it is applied + and -), got {alpha}")
    idx = layer_index(base.model, layer)
    s = resolve_scale(base.model, idx, None, base.tok)
    controls = [random_direction(candidates[0].dim, seed + i, candidates[0].norm, layer=idx) for i in range(n_random)]

    def measure(arm: Arm, d: Direction, a: float, purpose: str) -> dict[str, Any]:
        return condition(setup, arm, idx, d, a, positions=positions, scale=s, purpose=purpose)

    base0 = measure(base, candidates[0], 0.0, "screen")
    ft0 = measure(misaligned, candidates[0], 0.0, "screen") if misaligned is not None else None
    screen_id = config_hash({"base": base.label, "ft": misaligned.label if misaligned else None, "alpha": alpha,
                             "layer": idx, "sampling": setup.sampling, "judge": setup.judge.id,
                             "samples": setup.samples, "dirs": [d.digest() for d in candidates],
                             "controls": n_random, "seed": seed})
    out = []
    for d, purpose in [*((c, "screen") for c in candidates), *((c, "control") for c in controls)]:
        plus = measure(base, d, alpha, purpose)
        effects = [_difference(plus["misaligned"], base0["misaligned"])]
        minus = None
        if misaligned is not None and ft0 is not None:
            minus = measure(misaligned, d, -alpha, purpose)
            effects.append(_difference(ft0["misaligned"], minus["misaligned"]))
        have = [e for e in effects if e is not None]
        out.append(dict(screen=screen_id, direction=d.name, digest=d.digest(), latent=d.meta.get("latent"),
                        control=int(purpose == "control"), alpha=float(alpha), plus_effect=effects[0],
                        minus_effect=effects[1] if len(effects) > 1 else None,
                        score=sum(have) / len(have) if have else None, plus_coherent=plus["coherent"],
                        minus_coherent=minus["coherent"] if minus else None))
    out.sort(key=lambda r: -float("inf") if r["score"] is None else -r["score"])
    for i, r in enumerate(out, 1):
        r["rank"] = i
    setup.run.db.insert("steering_screen", out, replace=True)
    return out


def sweep(run: Any, model: Any, tok: Any, layer: int | str, direction: Direction, alphas: Sequence[float],
          questions: Sequence[Any], judge: Any, sampling: Any, label: str, *, samples: int | None = None,
          progress: bool = True, **kw: Any) -> dict[str, Any]:
    """:func:`dose_response` with the evaluation setup and the arm given part by part
    (``kw``: ``positions``, ``scale``, ``max_incoherence``, ``relative``)."""
    setup = EvalSetup(run, judge, sampling, questions, samples, progress)
    return dose_response(setup, Arm(model, tok, label), layer, direction, alphas, **kw)


def causal_screen(run: Any, base: Arm, candidates: Sequence[Direction], questions: Sequence[Any], judge: Any,
                  sampling: Any, *, samples: int | None = None, progress: bool = True, **kw: Any) -> list[dict]:
    """:func:`screen` with the evaluation setup given part by part
    (``kw``: ``layer``, ``alpha``, ``misaligned``, ``n_random``, ``seed``, ``positions``)."""
    return screen(EvalSetup(run, judge, sampling, questions, samples, progress), base, candidates, **kw)
