"""Report section ``positive-control``: did the machinery find the planted persona, and where do the
narrow fine-tunes sit on its latents (projection on shared inputs, with bootstrap intervals)?"""

from __future__ import annotations

from typing import Any

from emkit.report.fmt import esc, fmt_p, fmt_rate, table
from emkit.stage_results import PersonaRanking, PositiveEval, Projection, SteerPositive, stage_result


def _ci(p: dict | None) -> str:
    if not p or p.get("shift") is None:
        return "–"
    return f"{p['shift']:+.3g} [{p['lo']:+.3g}, {p['hi']:+.3g}]"


def _context(ctx: dict) -> str:
    """A context as plain text with the activating token in brackets."""
    toks = list(ctx.get("tokens") or [])
    peak = ctx.get("peak")
    if isinstance(peak, int) and 0 <= peak < len(toks):
        toks[peak] = f"[[{toks[peak]}]]"
    return "".join(toks).replace("\n", " ")[-160:]


def parts(res: dict[str, Any]) -> tuple[PositiveEval | None, PersonaRanking | None, SteerPositive | None]:
    """The positive control's pieces of the evaluate, diff and steer summaries (None where absent)."""
    return (stage_result(res, "evaluate").positive_control, stage_result(res, "diff").positive_control,
            stage_result(res, "steer").positive_control)


def _plain(rec: Any) -> dict | None:
    return None if rec is None else rec.to_dict()


def verdict_sentence(res: dict[str, Any]) -> str | None:
    """One summary sentence on the positive control, or None when the recipe has none."""
    from emkit.positive_control import verdict

    ev, df, st = parts(res)
    if ev is None:
        return None
    return verdict(_plain(ev), _plain(df) if "diff" in res else None, _plain(st) if "steer" in res else None)["text"]


def projection_sentence(res: dict[str, Any]) -> str | None:
    """Where the narrow fine-tunes sit on the positive control's latents, vs base and vs their control."""
    proj = stage_result(res, "diff").projection or Projection.empty()
    ref = proj.reference
    rows = [r for r in proj.rows if r.get("control") and r["model"] != ref]
    if not rows:
        return None
    parts = [f"{r['model']} {_ci(r.get('vs_control'))} vs {r['control']}" for r in rows]
    own = next((r for r in proj.rows if r["model"] == ref), {})
    return (f"Projection on the positive control's top {len(proj.latents)} latents (mean activation shift "
            f"on shared inputs, 95% bootstrap CI): {'; '.join(parts)}; {ref} itself {_ci(own.get('vs_base'))} vs base. "
            "An interval above 0 vs the control means wrong advice moved the persona direction beyond correct advice.")


def summary_lines(res: dict[str, Any]) -> list[str]:
    """The positive control's summary sentences (none when the recipe has no such arm)."""
    return [s for s in (verdict_sentence(res), projection_sentence(res)) if s]


def projection_plot(rows: list[dict]) -> str:
    """Each model's shift on the positive control's latents vs base (dots) and vs its control (squares)."""
    from emkit.report import plots

    rows = [r for r in rows if (r.get("vs_base") or {}).get("shift") is not None]
    if not rows:
        return ""
    fig, ax = plots.plt.subplots(figsize=(6, 0.35 * len(rows) + 1.0))
    for i, r in enumerate(rows):
        for key, off, mark, col in (("vs_base", -0.12, "o", plots.COLORS[0]), ("vs_control", 0.12, "s", plots.COLORS[1])):
            p = r.get(key)
            if p and p.get("shift") is not None:
                ax.errorbar([p["shift"]], [i + off], xerr=[[p["shift"] - p["lo"]], [p["hi"] - p["shift"]]], fmt=mark,
                            color=col, ms=4, capsize=2, label=key.replace("_", " ") if i == 0 or key not in
                            ax.get_legend_handles_labels()[1] else None)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([plots._t(r["model"]) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="#57606a", lw=0.8)
    ax.set_xlabel("mean activation shift on the positive control's top latents")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, frameon=False)
    return plots.to_svg(fig)


def sec_positive_control(res: dict[str, Any]) -> str:
    ev, df, st = parts(res)
    diff = stage_result(res, "diff")
    if ev is None:
        return ('<p class="missing">This recipe has no positive-control arm (positive_control.enabled), so '
                "nothing shows whether the pipeline could find a planted misaligned persona.</p>")
    out = [f"<p><strong>{esc(verdict_sentence(res))}</strong></p>"]
    base_eval = stage_result(res, "baseline").eval
    base = base_eval.misaligned if base_eval else None
    det = ev.detection or {}
    rows = [["base", fmt_rate(base), "", ""]]
    for lab, m in (ev.models or {}).items():
        first = lab == ev.label
        rows.append([lab, fmt_rate(m.misaligned), fmt_p(det.get("p_vs_base")) if first else "",
                     fmt_p(det.get("p_vs_control")) if first else ""])
    out.append(f"<h3>Behaviour ({esc(ev.data)} vs {esc(ev.control_data)})</h3>"
               + table(["model", "misaligned", "p vs base", "p vs its control"], rows))
    if df:
        rk = (df.ranking or [])[:8]
        lab, ctrl = df.label, df.control
        out.append(f"<h3>Its own top latents (ranked against {esc(df.ranked_against)}; inputs: "
                   f"{esc(diff.inputs)})</h3>" + table(
                       ["rank", "latent", "score", f"Δ {lab}", f"Δ {ctrl}"],
                       [[r["rank"], f"#{r['latent']}", f"{r['score']:.4g}", f"{r['deltas'].get(lab, 0):.4g}",
                         f"{r['deltas'].get(ctrl, 0):.4g}" if ctrl else "–"] for r in rk]))
    cards = stage_result(res, "interpret").positive_control_cards or []
    if cards:
        out.append("<h3>What its top latents read (SAE corpus contexts, logit lens)</h3>" + table(
            ["latent", "label", "promotes", "top context"],
            [[f"#{c['latent']}", c.get("label") or "", ", ".join(repr(t) for t, _ in c.get("promoted", [])[:6]),
              _context(c["contexts"][0]) if c.get("contexts") else ""] for c in cards]))
    if st:
        srows = [[name, fmt_rate((getattr(st, key) or {}).get("misaligned")),
                  fmt_rate((getattr(st, key) or {}).get("coherent"), n=False)]
                 for name, key in (("base, unsteered", "base_zero"), (f"base + #{st.latent}", "latent_plus"),
                                   ("base + random (same norm)", "random_plus"), (f"{st.model}, unsteered", "model_zero"),
                                   (f"{st.model} − #{st.latent}", "latent_minus"),
                                   (f"{st.model} − random", "random_minus")) if st.has(key)]
        plus, minus = st.plus or {}, st.minus or {}
        out.append(f"<h3>Steering with its top latent (strength {esc(st.alpha)})</h3>"
                   + table(["condition", "misaligned", "coherent"], srows)
                   + f"<p>Latent vs random: + on base {fmt_p(plus.get('p_vs_random'))}, − on {esc(st.model)} "
                     f"{fmt_p(minus.get('p_vs_random'))} (Fisher).</p>")
    proj = diff.projection
    if proj:
        prow = [[r["model"], _ci(r.get("vs_base")), r.get("control") or "", _ci(r.get("vs_control")),
                 "–" if r.get("relative") is None else f"{r['relative']:.2f}"] for r in proj.rows]
        out.append(f"<h3>Projection on its top {len(proj.latents)} latents (shared inputs)</h3>"
                   "<p>Does wrong advice move the persona direction beyond the correct-data control? Mean activation "
                   f"shift on latents {esc(', '.join('#' + str(x) for x in proj.latents))}, with bootstrap "
                   f"95% intervals over the {esc((proj.rows or [{}])[0].get('vs_base', {}).get('n_texts'))} "
                   f"shared texts; relative = share of {esc(proj.reference)}'s own shift.</p>"
                   + projection_plot(proj.rows)
                   + table(["model", "shift vs base [95% CI]", "control", "shift vs control [95% CI]", "relative"],
                            prow))
    elif diff:
        out.append('<p class="missing">No projection: it needs diff.inputs shared (or both).</p>')
    own = diff.own
    if own:
        orank = (own.ranking or [])[:8]
        srank = (diff.ranking or [])[:8]
        out.append("<h3>Shared inputs vs own answers (narrow ranking, top 8)</h3>" + table(
            ["rank", "shared: latent", "score", "own answers: latent", "score"],
            [[i + 1, f"#{a['latent']}", f"{a['score']:.4g}", f"#{b['latent']}", f"{b['score']:.4g}"]
             for i, (a, b) in enumerate(zip(srank, orank, strict=False))]))
    return "".join(out)
