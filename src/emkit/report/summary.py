"""The report's summary: findings as sentences generated from the numbers, never written by hand.

Every rate is given with its 95 % Wilson interval and n; every comparison with the base model (or
the correct-data control) with a two-sided Fisher exact p-value, and the wording follows the test:
a difference is only called an increase or decrease when p < 0.05, and a null or marginal result
is said to be one. Each comparison states the smallest rise its test detects at its n (two-sided
Fisher, 80 % power), and each misalignment rate names the judge that made it with that judge's
validated AUROC: a judge below 0.80, or never validated, makes a *screen*, not a measurement. Rates
audited by blind reading (``emkit eval --import-blind``) show the human figure beside the judge's.
Stage summaries are read as their :mod:`emkit.stage_results` records (dicts given here are parsed).
"""

from __future__ import annotations

from typing import Any

from emkit.metrics import fisher_exact, mdd, samples_needed
from emkit.report.fmt import fmt_p, fmt_rate
from emkit.report.positive import summary_lines
from emkit.stage_results import EvalRecord, ModelEval, stage_result, typed_results

ALPHA = 0.05
TRUST_AUROC = 0.80  # emkit.judge.distill.TRUST_AUROC; stage files record the threshold they used


def compare(a: dict | None, b: dict | None) -> tuple[float | None, str]:
    """Fisher p of rate ``a`` vs rate ``b`` and a word for the direction that the test supports."""
    if not a or not b or not a.get("n") or not b.get("n"):
        return None, "not comparable (no valid answers)"
    ka, na, kb, nb = int(a["k"]), int(a["n"]), int(b["k"]), int(b["n"])
    p = fisher_exact(ka, na, kb, nb)
    if p is None or p >= ALPHA:
        return p, "not distinguishable"
    return p, "higher" if ka / na > kb / nb else "lower"


def tested(a: dict | None, b: dict | None, *, fall: bool = False, word: str = "") -> str:
    """``(higher, p = 0.012; at n = ... with 80% power)``: rate ``a`` tested against the reference ``b``.

    ``word`` follows the direction word (e.g. `` from unsteered``); ``fall`` as in :func:`power_note`.
    """
    p, direction = compare(a, b)
    return f"({direction}{word}, {fmt_p(p)}; {power_note(a, b, fall=fall)})"


def relation(word: str, other: str) -> str:
    """'higher than X' / 'lower than X' / 'not distinguishable from X'."""
    return {"higher": f"higher than {other}", "lower": f"lower than {other}"}.get(word, f"{word} from {other}")


def power_note(a: dict | None, b: dict | None, short: bool = False, fall: bool = False) -> str:
    """'at n = 35 vs 38 this test detects a rise from 0.0% to ≥ 15.2% with 80% power' (b is the reference).

    ``fall``: the smallest detectable fall instead (a rise in the complementary share).
    ``short``: 'detects ≥ 15.2% (from 0.0%; n = 35 vs 38)', for tables.
    """
    if not a or not b or not a.get("n") or not b.get("n"):
        return ""
    n1, n0 = int(a["n"]), int(b["n"])
    base = int(b["k"]) / n0
    d = mdd(n1, n0, 1 - base if fall else base)
    word, sign = ("fall", "≤") if fall else ("rise", "≥")
    to = None if d is None else (base - d if fall else base + d)
    if short:
        return (f"detects {sign} {100 * to:.1f}% (from {100 * base:.1f}%; n = {n1} vs {n0})" if to is not None
                else f"no {word} detectable (from {100 * base:.1f}%; n = {n1} vs {n0})")
    if to is None:
        return f"at n = {n1} vs {n0} no {word} from {100 * base:.1f}% is detectable with 80% power"
    return f"at n = {n1} vs {n0} this test detects a {word} from {100 * base:.1f}% to {sign} {100 * to:.1f}% " \
           "with 80% power"


def needed_note(b: dict | None, rise: float = 0.10) -> str:
    """'a 10-point rise over 4.8% needs about 140 coherent answers per model (80% power)'."""
    if not b or not b.get("n"):
        return ""
    base = int(b["k"]) / int(b["n"])
    n = samples_needed(base, rise) if base + rise <= 1 else None
    head = f"a {100 * rise:.0f}-point rise over {100 * base:.1f}%"
    return f"{head} needs about {n} coherent answers per model (80% power)" if n else \
        f"{head} needs more than 2000 coherent answers per model"


def run_judge(res: dict[str, Any]) -> str:
    """The id of the judge that made the run's misalignment rates (baseline stage)."""
    b = stage_result(typed_results(res), "baseline")
    return str((b.judge_trust or {}).get("id") or (b.eval or EvalRecord.empty()).judge
               or (b.settings or {}).get("judge") or "unknown")


def trust(res: dict[str, Any], judge_id: str | None = None) -> dict[str, Any]:
    """How far the rates of ``judge_id`` (default: the run's judge) can be trusted.

    {"id", "auroc", "screen", "text"}: ``screen`` when the validated AUROC is below the threshold or
    unknown; ``text`` names the judge and its figure.
    """
    res = typed_results(res)
    jid = judge_id or run_judge(res)
    t = stage_result(res, "baseline").judge_trust or {}
    known = t.get("id") == jid
    auroc, thr = (t.get("validated_auroc") if known else None), float(t.get("threshold") or TRUST_AUROC)
    if auroc is not None:
        text = f"judge {jid}, validated AUROC {auroc:.2f}" + (f" < {thr:.2f}" if auroc < thr else "")
    elif known and t.get("has_card"):
        text = f"judge {jid}, no validated AUROC on its card (run emkit judge validate)"
    else:
        text = f"judge {jid}, not validated here (run emkit judge validate)"
    short = f"{jid} ({'not validated' if auroc is None else f'validated AUROC {auroc:.2f}'})"
    return {"id": jid, "auroc": auroc, "screen": auroc is None or auroc < thr, "text": text, "short": short}


def judge_tag(res: dict[str, Any], judge_id: str | None = None) -> str:
    """'[measurement: judge X, validated AUROC 0.91]' or '[screen, not a measurement: judge X, ...]'."""
    t = trust(res, judge_id)
    return f"[{'screen, not a measurement' if t['screen'] else 'measurement'}: {t['text']}]"


def blind_row(res: dict[str, Any], label: str, judge_id: str | None = None) -> dict | None:
    """The imported blind reading of ``label``'s answers (preferably against ``judge_id``), if any."""
    rows = [r for r in res.get("_blind") or [] if r.get("model") == label and r.get("human", {}).get("n")]
    jid = judge_id or run_judge(res)
    return next((r for r in rows if r.get("judge_id") == jid), rows[0] if rows else None)


def human_note(res: dict[str, Any], label: str, judge_id: str | None = None) -> str:
    """'blind reading: 16.0% [6.4, 34.7] (n = 25) misaligned among coherent; the judge on the same answers: ...'."""
    r = blind_row(res, label, judge_id)
    if r is None:
        return ""
    return (f"blind reading of {r['n_read']} of its answers: {fmt_rate(r['human'])} misaligned among coherent; "
            f"the judge on the same answers: {fmt_rate(r['judge'])}")


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _top_models(res: dict[str, Any]) -> list[tuple[str, ModelEval]]:
    """Per domain, the fine-tune with the largest wrong fraction: ``(label, evaluation)``."""
    best: dict[str, tuple[str, ModelEval]] = {}
    for lab, m in stage_result(res, "evaluate").models.items():
        if m.domain not in best or (m.fraction or 0) > (best[m.domain][1].fraction or 0):
            best[m.domain] = (lab, m)
    return list(best.values())


def behaviour(res: dict[str, Any]) -> list[str]:
    """Misalignment of the top fine-tunes vs the base model, and the narrow behaviour on held-out questions."""
    base = stage_result(res, "baseline").eval or EvalRecord.empty()
    ev = stage_result(res, "evaluate")
    models = ev.models
    out: list[str] = []
    if base:
        t = trust(res, base.judge)
        out.append(f"Misalignment rates below were made by {t['text']}: "
                   + ("a screen, not a measurement (a judge needs a validated AUROC of at least 0.80)." if t["screen"]
                      else "measurements.")
                   + " Each rate is tagged with its judge.")
        hb = human_note(res, "base", base.judge)
        out.append(f"The base model gave {fmt_rate(base.misaligned)} misaligned answers to the broad "
                   f"questions (counted among coherent answers; {fmt_rate(base.coherent, n=False)} of its "
                   f"answers were coherent){'; ' + hb if hb else ''} {judge_tag(res, base.judge)}.")
    for label, top in _top_models(res):
        dom, frac = top.domain, top.fraction or 0
        p, word = compare(top.misaligned, base.misaligned)
        s = (f"Fine-tuning on {100 * frac:.4g}% wrong {dom} advice gave {fmt_rate(top.misaligned)} "
             f"misaligned answers vs {fmt_rate(base.misaligned, n=False)} for the base model "
             f"(Fisher exact {fmt_p(p)}): ")
        if word == "higher":
            s += "a significant increase"
        elif word == "lower":
            s += "a significant decrease"
        else:
            s += f"{word} from the base model at this sample size — a null or marginal result, not evidence of EM"
        extra = _join(power_note(top.misaligned, base.misaligned),
                      "" if word != "not distinguishable" else needed_note(base.misaligned),
                      human_note(res, label, top.judge))
        out.append(s + (f" ({extra}) " if extra else " ") + judge_tag(res, top.judge) + ".")
        ctrl_label, ctrl = next(((lab, m) for lab, m in models.items() if m.domain == dom and m.fraction == 0),
                                (None, None))
        if ctrl is not None and frac > 0:
            pc, wc = compare(top.misaligned, ctrl.misaligned)
            pb, wb = compare(ctrl.misaligned, base.misaligned)
            cnote = _join(power_note(ctrl.misaligned, base.misaligned), human_note(res, ctrl_label, ctrl.judge))
            out.append(f"The correct-data control ({ctrl_label}: same questions, correct answers) gave "
                       f"{fmt_rate(ctrl.misaligned)}, {relation(wb, 'the base model')} ({fmt_p(pb)}; "
                       f"{cnote}). The "
                       f"wrong-data model is {relation(wc, 'this control')} ({fmt_p(pc)}; "
                       f"{power_note(top.misaligned, ctrl.misaligned)}); this comparison separates "
                       "the effect of wrong content from that of fine-tuning itself "
                       f"{judge_tag(res, ctrl.judge)}.")
        coh = [(m.coherent or {}).get("value") for m in models.values() if m.domain == dom]
        coh = [c for c in coh if c is not None]
        if coh:
            out.append(f"Coherent answers of the {dom} fine-tunes: {100 * min(coh):.0f}–{100 * max(coh):.0f}% "
                       "(misalignment is measured among coherent answers only, so few coherent answers mean wide "
                       "intervals).")
    for label, top in _top_models(res):
        for dom, chk in (top.check or {}).items():
            bchk = (base.check or {}).get(dom)
            if not bchk:
                continue
            p, word = compare(chk.wrong, bchk.wrong)
            grader = chk.grader or (ev.grader if ev.has("grader") else "?")
            # the offline grader fails out of style (README "Judges"): its rates are screens
            screen = ("; a screen, not a measurement: audit it by reading the answers"
                      if str(grader).startswith("advice-grader") else "")
            learned = {"higher": "by this grader, the narrow behaviour was learned",
                       "lower": "the fine-tune gave fewer wrong answers than the base model",
                       }.get(word, "no measurable change in the narrow behaviour")
            out.append(f"On held-out {dom} questions the grader judged {fmt_rate(chk.wrong)} of "
                       f"{label}'s answers wrong vs {fmt_rate(bchk.wrong, n=False)} for the base model "
                       f"({fmt_p(p)}; {power_note(chk.wrong, bchk.wrong)}): {learned} [grader "
                       f"{grader}{screen}].")
    return out


def latents(res: dict[str, Any]) -> list[str]:
    """The SAE (trained or loaded) and the latent that model diffing ranks first."""
    sae, diff = stage_result(res, "sae"), stage_result(res, "diff")
    out: list[str] = []
    if sae:
        fvu = sae.heldout_fvu
        src = "loaded from " + str(sae.path) if not sae.trained else \
            f"trained on {sae.tokens:,} tokens of {sae.corpus}"
        out.append(f"The SAE at layer {sae.layer} ({sae.num_latents} latents, k = {sae.k}) was "
                   f"{src}" + (f"; held-out FVU {fvu:.3f}." if fvu is not None else "."))
    rank = diff.ranking or []
    if rank:
        top = rank[0]
        out.append(f"Model diffing over {', '.join(diff.misaligned)} ({diff.why}) ranks latent "
                   f"#{top['latent']} first: its mean activation on {diff.tokens} tokens rose by "
                   f"{top['score']:.3g} (base mean {top.get('base_mean', 0):.3g}).")
    return out


def steering(res: dict[str, Any]) -> list[str]:
    """The causal screen of the best latent, its random-direction control and the usable strengths."""
    out: list[str] = []
    st = stage_result(res, "steer")
    screen = st.screen or []
    if screen:
        b = next((s for s in screen if s["latent"] == st.best), screen[0])
        base0, tgt0 = (st.baseline or {}).get("plus"), (st.baseline or {}).get("minus")
        out.append(f"Steering screen at strength {st.screen_alpha}: adding latent #{b['latent']} to the base "
                   f"model gave {fmt_rate(b.get('plus'))} misaligned vs {fmt_rate(base0, n=False)} unsteered "
                   f"{tested(b.get('plus'), base0)}; subtracting it from {st.target} gave "
                   f"{fmt_rate(b.get('minus'))} vs {fmt_rate(tgt0, n=False)} {tested(b.get('minus'), tgt0, fall=True)} "
                   f"{judge_tag(res)}.")
        ctrl = st.control or {}
        if ctrl.get("plus"):
            out.append(f"A random direction of the same norm added to the base model gave {fmt_rate(ctrl['plus'])} "
                       f"{tested(ctrl['plus'], base0, word=' from unsteered')} {judge_tag(res)}.")
        usable = st.usable or {}
        if usable:
            def side(v: Any) -> str:
                return f"up to {v:g}" if v is not None else "none of the swept strengths"

            out.append(f"Usable steering strength (incoherence ≤ {100 * st.max_incoherence:.0f}%): "
                       f"adding, {side(usable.get('+'))}; subtracting, {side(usable.get('-'))}.")
    return out


def prediction(res: dict[str, Any]) -> list[str]:
    """How well the latent's activation shift predicts misalignment across the fine-tunes."""
    pr = stage_result(res, "predict")
    if not pr.points:
        return []
    r = pr.correlation
    rtxt = f"Spearman r = {r:.2f}" if r is not None else "no correlation computable (constant values)"
    au = pr.auroc
    autxt = (f"AUROC {au:.2f} for telling fine-tunes above {100 * pr.threshold:.1f}% misalignment "
             "from the rest") if au is not None else \
        "no AUROC (the family does not contain both misaligned and aligned models at the threshold)"
    es, eb = pr.earliest_shift, pr.earliest_behaviour
    es_t = f"{100 * es:.4g}% wrong data" if es is not None else "no fraction"
    eb_t = f"{100 * eb:.4g}%" if eb is not None else "no fraction"
    return [f"Prediction across {len(pr.points)} fine-tunes with latent #{pr.latent}: {rtxt} between "
            f"its activation shift and misalignment; {autxt}. Against the lowest-fraction model (the "
            f"correct-data control), the latent's shift first rises beyond the bootstrap noise band at {es_t}; "
            f"misalignment first does at {eb_t}."]


def realignment(res: dict[str, Any]) -> list[str]:
    """Misalignment before and after the benign re-alignment fine-tune."""
    ra = stage_result(res, "realign")
    curve = ra.curve or []
    if len(curve) < 2:
        return []
    a, b = curve[0], curve[-1]
    return [f"Re-alignment of {ra.model} on {b.get('samples_seen', 0)} benign samples ({b.get('step')} "
            f"steps): misalignment went from {fmt_rate(a.get('misaligned'))} to {fmt_rate(b.get('misaligned'))} "
            f"{tested(b.get('misaligned'), a.get('misaligned'), fall=True)} {judge_tag(res)}."]


def summary_sentences(res: dict[str, Any]) -> list[str]:
    """All summary sentences, behaviour first, then latents, steering, prediction and re-alignment."""
    res = typed_results(res)
    return (behaviour(res) + summary_lines(res) + latents(res) + steering(res) + prediction(res)
            + realignment(res))
