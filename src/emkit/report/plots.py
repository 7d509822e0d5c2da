"""Static plots for the report: matplotlib figures rendered to inline SVG (text kept as text).

Every function takes plain numbers (from the stage summaries) and returns an ``<svg>`` string, or
``""`` when there is nothing to draw. Rates are fractions in [0, 1] and shown as percentages with
their interval as error bars.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7e8c", "#57606a"]
plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                     "axes.spines.right": False, "figure.dpi": 100, "svg.hashsalt": "emkit"})


def to_svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, no fixed pixel size)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    return svg.replace("<svg ", '<svg class="plot" role="img" ', 1)


def _t(s: Any) -> str:
    """A label safe for matplotlib (no mathtext from ``$`` in user-supplied names)."""
    return str(s).replace("$", r"\$")


def _pct(x: float | None) -> float:
    return float("nan") if x is None else 100.0 * x


def _err(rates: Sequence[dict]) -> list[list[float]]:
    lo = [max(0.0, _pct(r.get("value")) - _pct(r.get("lo"))) if r.get("lo") is not None else 0.0 for r in rates]
    hi = [max(0.0, _pct(r.get("hi")) - _pct(r.get("value"))) if r.get("hi") is not None else 0.0 for r in rates]
    return [lo, hi]


def rate_vs_x(series: dict[str, list[tuple[float, dict]]], *, xlabel: str, ylabel: str, title: str = "",
              baseline: dict | None = None, baseline_label: str = "base model", xpct: bool = True,
              width: float = 5.5, height: float = 3.2) -> str:
    """Rates with intervals against x, one line per series; an optional horizontal band for the base."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return ""
    fig, ax = plt.subplots(figsize=(width, height))
    if baseline and baseline.get("value") is not None:
        ax.axhline(_pct(baseline["value"]), color="#57606a", lw=1, ls="--", label=baseline_label)
        if baseline.get("lo") is not None:
            ax.axhspan(_pct(baseline["lo"]), _pct(baseline["hi"]), color="#57606a", alpha=0.12, lw=0)
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(pts, key=lambda p: p[0])
        xs = [100 * p[0] if xpct else p[0] for p in pts]
        rates = [p[1] for p in pts]
        ax.errorbar(xs, [_pct(r.get("value")) for r in rates], yerr=_err(rates), marker="o", ms=4, capsize=3,
                    color=COLORS[i % len(COLORS)], label=_t(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return to_svg(fig)


def per_question(rows: list[dict], models: list[str], *, metric: str = "misaligned", top: int = 20) -> str:
    """Horizontal grouped bars: the rate per question for each model (questions with the highest rates)."""
    if not rows or not models:
        return ""
    rows = sorted(rows, key=lambda r: -max((_pct(r["rates"].get(m, {}).get("value")) or 0) if
                                           r["rates"].get(m, {}).get("value") is not None else 0 for m in models))
    rows = rows[:top]
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(rows) * max(1, len(models)) ** 0.5 + 1.0))
    h = 0.8 / len(models)
    for j, m in enumerate(models):
        vals = [r["rates"].get(m, {}).get("value") for r in rows]
        ys = [i + j * h for i in range(len(rows))]
        ax.barh(ys, [_pct(v) if v is not None else 0 for v in vals], height=h, color=COLORS[j % len(COLORS)],
                label=_t(m))
    ax.set_yticks([i + 0.4 - h / 2 for i in range(len(rows))])
    ax.set_yticklabels([_t(r["id"][:40]) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (% of answers)")
    ax.legend(frameon=False, fontsize=7, loc="lower right")
    return to_svg(fig)


def ranking(latents: list[dict], *, top: int = 20) -> str:
    """Bars of the top latents' scores (mean activation increase over the misaligned fine-tunes)."""
    latents = latents[:top]
    if not latents:
        return ""
    fig, ax = plt.subplots(figsize=(6, 0.22 * len(latents) + 1.0))
    ax.barh(range(len(latents)), [lat["score"] for lat in latents], color=COLORS[0])
    ax.set_yticks(range(len(latents)))
    ax.set_yticklabels([f"#{lat['latent']}" for lat in latents], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="#57606a", lw=0.8)
    ax.set_xlabel("mean activation increase (fine-tuned − base)")
    return to_svg(fig)


def histogram(edges: Sequence[float], counts: Sequence[float], *, width: float = 2.6, height: float = 1.4) -> str:
    """A small activation histogram (log counts) for a latent card."""
    if not counts or len(edges) != len(counts) + 1:
        return ""
    fig, ax = plt.subplots(figsize=(width, height))
    ax.stairs(counts, edges, fill=True, color=COLORS[0], alpha=0.8)
    if max(counts) > 0:
        from matplotlib.ticker import LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("activation (when firing)", fontsize=7)
    ax.tick_params(labelsize=6)
    return to_svg(fig)


def dose_response(points: list[dict], *, usable: dict[str, float | None] | None = None) -> str:
    """Misalignment and coherence against steering strength, + (on base) and − (on the misaligned model)."""
    if not points:
        return ""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharex=True)
    for ax, metric, name in ((axes[0], "misaligned", "misaligned (%)"), (axes[1], "coherent", "coherent (%)")):
        for i, sign in enumerate(("+", "-")):
            pts = sorted((p for p in points if p["sign"] == sign), key=lambda p: p["alpha"])
            if not pts:
                continue
            xs = [p["alpha"] if sign == "+" else -p["alpha"] for p in pts]
            rates = [p[metric] for p in pts]
            ax.errorbar(xs, [_pct(r.get("value")) for r in rates], yerr=_err(rates), marker="o", ms=4, capsize=3,
                        color=COLORS[i], label=_t(f"{sign} on {pts[0]['model']}"))
        ax.set_ylabel(name)
        ax.set_xlabel("strength (× typical residual norm)")
        ax.set_ylim(bottom=0)
        ax.axvline(0, color="#57606a", lw=0.8)
        if usable:
            for sign, a in usable.items():
                if a:
                    ax.axvline(a if sign == "+" else -a, color="#9a6700", lw=0.8, ls=":")
    axes[0].legend(frameon=False, fontsize=7)
    return to_svg(fig)


def shift_vs_rate(points: list[dict]) -> str:
    """Each fine-tune's latent shift (x, with band) against its misalignment rate (y, with interval)."""
    pts = [p for p in points if p.get("shift") is not None and p["rate"].get("value") is not None]
    if not pts:
        return ""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    domains = sorted({p.get("domain", "") for p in pts})
    for i, d in enumerate(domains):
        sub = [p for p in pts if p.get("domain", "") == d]
        xerr = [[p["shift"] - (p.get("shift_lo") if p.get("shift_lo") is not None else p["shift"]) for p in sub],
                [(p.get("shift_hi") if p.get("shift_hi") is not None else p["shift"]) - p["shift"] for p in sub]]
        ax.errorbar([p["shift"] for p in sub], [_pct(p["rate"]["value"]) for p in sub], xerr=xerr,
                    yerr=_err([p["rate"] for p in sub]), fmt="o", ms=4, capsize=3, color=COLORS[i % len(COLORS)],
                    label=_t(d) if d else None)
        for p in sub:
            ax.annotate(f"{100 * p['fraction']:.4g}%", (p["shift"], _pct(p["rate"]["value"])), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("latent activation shift vs base")
    ax.set_ylabel("misaligned (%)")
    if len(domains) > 1:
        ax.legend(frameon=False, fontsize=7)
    return to_svg(fig)


def early_warning(points: list[dict], band: Sequence[float | None] | None) -> str:
    """Latent shift (left axis) and misalignment (right axis) against the fraction of wrong data."""
    pts = sorted((p for p in points if p.get("shift") is not None), key=lambda p: p["fraction"])
    if not pts:
        return ""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    xs = [100 * p["fraction"] for p in pts]
    ax.plot(xs, [p["shift"] for p in pts], marker="o", color=COLORS[0], label="latent shift")
    if band and band[0] is not None and band[1] is not None:
        ax.axhspan(band[0], band[1], color=COLORS[0], alpha=0.12, lw=0)
    ax.set_xlabel("wrong data in the fine-tuning mix (%)")
    ax.set_ylabel("latent shift", color=COLORS[0])
    ax2 = ax.twinx()
    rates = [p["rate"] for p in pts]
    ax2.errorbar(xs, [_pct(r.get("value")) for r in rates], yerr=_err(rates), marker="s", ms=4, capsize=3,
                 color=COLORS[1], label="misaligned (%)")
    ax2.set_ylabel("misaligned (%)", color=COLORS[1])
    ax2.set_ylim(bottom=0)
    ax2.spines["right"].set_visible(True)
    return to_svg(fig)


def curve(points: list[dict], *, xkey: str = "step", xlabel: str = "step") -> str:
    """Misalignment and coherence (with intervals) along a training curve."""
    pts = sorted(points, key=lambda p: p[xkey])
    if not pts:
        return ""
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    xs = [p[xkey] for p in pts]
    for i, (metric, name) in enumerate((("misaligned", "misaligned (%)"), ("coherent", "coherent (%)"))):
        rates = [p.get(metric) or {} for p in pts]
        if not any(r.get("value") is not None for r in rates):
            continue
        ax.errorbar(xs, [_pct(r.get("value")) for r in rates], yerr=_err(rates), marker="o", ms=4, capsize=3,
                    color=COLORS[i], label=_t(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("% of answers")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8)
    return to_svg(fig)


def loss_curves(curves: dict[str, list]) -> str:
    """Training loss per step for each fine-tune: ``{label: [[step, loss], ...]}``."""
    curves = {label: pts for label, pts in curves.items() if pts}
    if not curves:
        return ""
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    for i, (label, pts) in enumerate(curves.items()):
        steps, losses = zip(*pts, strict=True)
        ax.plot(steps, losses, lw=1.2, color=COLORS[i % len(COLORS)], label=_t(label))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.legend(frameon=False, fontsize=7)
    return to_svg(fig)
