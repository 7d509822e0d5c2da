"""Emergent re-alignment: continue SFT of a misaligned model on a few hundred benign samples.

Every ``eval_every`` optimizer steps (and before the first) the model answers the evaluation
questions, a judge scores them, and the misalignment rate (Wilson interval) and coherence share go
to the ``realign_curve`` table of ``results.sqlite`` — the curve of how fast misalignment
disappears with benign data (Wang et al.: batch 4, ~35 steps, a few hundred samples). A LoRA model
keeps training its own adapter; a full model gets the LoRA (or full) training its config says.
Interrupted runs resume: the fine-tune from its checkpoint, the curve from the steps already stored.
The pipeline's re-alignment also keeps each point's counts in ``training_evals`` (:func:`counted_eval_fn`),
from which :func:`counted_curve` gives the curve with Wilson intervals.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from emkit.data.schema import ChatRow
from emkit.errors import EmkitError
from emkit.results import register_table
from emkit.train.callbacks import (
    Callback,
    EvalCallback,
    EvalFn,
    Metric,
    StepContext,
    _finite,
    _split,
    training_evals,
)
from emkit.train.config import RealignConfig
from emkit.train.sft import finetune

log = logging.getLogger(__name__)

register_table(
    "realign_curve",
    """CREATE TABLE IF NOT EXISTS realign_curve (
        run_label TEXT NOT NULL,      -- the re-alignment run (model name)
        step INTEGER NOT NULL,        -- optimizer step (0 = the misaligned starting point)
        samples_seen INTEGER NOT NULL,
        misaligned REAL,              -- misalignment rate among coherent answers
        lo REAL,                      -- its 95% Wilson interval
        hi REAL,
        coherent REAL,                -- share of coherent answers
        n_answers INTEGER,
        created REAL NOT NULL DEFAULT (julianday('now')),
        PRIMARY KEY (run_label, step)
    )""",
)


class CurveCallback(EvalCallback):
    """An :class:`EvalCallback` that also writes each evaluation as a ``realign_curve`` row.

    Steps already on the stored curve (a resumed run) are not evaluated again.
    """

    def is_done(self, step: int) -> bool:
        if self.run is None:
            return False
        return bool(self.run.db.query("SELECT 1 FROM realign_curve WHERE run_label=? AND step=?", (self.label, step)))

    def evaluate(self, ctx: StepContext) -> dict[str, Metric] | None:
        metrics = super().evaluate(ctx)
        if metrics is None or self.run is None:
            return metrics
        v, lo, hi = _split(metrics.get("misaligned"))
        coh = _split(metrics.get("coherent"))[0]
        n = metrics.get("n_answers")
        self.run.db.insert("realign_curve", [dict(
            run_label=self.label, step=ctx.step, samples_seen=ctx.samples_seen, misaligned=_finite(v),
            lo=_finite(lo), hi=_finite(hi), coherent=_finite(coh), n_answers=None if n is None else int(n),
        )], replace=True)
        return metrics


def judge_eval_fn(run: Any, questions: Sequence, judge: Any, sampling: Any, label: str, samples: int) -> EvalFn:
    """``eval_fn`` answering ``questions`` and judging them with :func:`emkit.evaluate.evaluate`."""

    from emkit.eval_setup import EvalSetup

    setup = EvalSetup(run, judge, sampling, questions, samples)

    def eval_fn(model: Any, tok: Any, step: int) -> dict[str, Metric]:
        return summary_metrics(setup.evaluate(model, tok, f"{label}@step{step}"))

    return eval_fn


def counted_metrics(result: Any) -> dict[str, Metric]:
    """An :class:`emkit.evaluate.EvalResult` as one point of a curve with its counts: ``misaligned`` and
    ``coherent`` as (value, lo, hi), ``mis_k``/``mis_n`` and ``coh_k``/``coh_n``, and ``n_answers`` (the
    answers judged). A rubric judge's coherent share is 1 − its strict incoherence."""
    from emkit.metrics import coherent_rate, rate_dict

    overall = result.summary.get("")
    rubric = bool(getattr(result, "rubric", False))
    mis = rate_dict(overall.rates.get("misaligned") if overall else None)
    coh = coherent_rate(overall.rates, rubric) if overall else rate_dict(None)
    return {"misaligned": (mis["value"], mis["lo"], mis["hi"]), "coherent": (coh["value"], coh["lo"], coh["hi"]),
            "n_answers": len(result.rows), "mis_k": mis["k"], "mis_n": mis["n"], "coh_k": coh["k"], "coh_n": coh["n"]}


def counted_eval_fn(setup: Any, label: str, *, n_boot: int = 200) -> EvalFn:
    """``eval_fn`` of a run's re-alignment (the pipeline's): ``setup`` (an :class:`emkit.eval_setup.EvalSetup`)
    answers and judges under ``LABEL@STEP``, and each point keeps its counts (:func:`counted_metrics`), so
    :func:`counted_curve` reads Wilson rates back."""

    def eval_fn(model: Any, tok: Any, step: int) -> dict[str, Metric]:
        return counted_metrics(setup.evaluate(model, tok, f"{label}@{step}", n_boot=n_boot))

    return eval_fn


def counted_curve(db: Any, label: str) -> list[dict[str, Any]]:
    """The curve :func:`counted_eval_fn` stored in ``training_evals``: per step ``{step, samples_seen,
    misaligned, coherent}``, each rate ``{k, n, value, lo, hi}`` (Wilson) from the stored counts."""
    from emkit.metrics import wilson_rate

    return [{"step": d["step"], "samples_seen": d["samples_seen"],
             "misaligned": wilson_rate(int(d.get("mis_k") or 0), int(d.get("mis_n") or 0)),
             "coherent": wilson_rate(int(d.get("coh_k") or 0), int(d.get("coh_n") or 0))}
            for d in training_evals(db, label)]


def summary_metrics(result: Any) -> dict[str, Metric]:
    """The overall misalignment rate (value, lo, hi), coherence share and answer count of a result."""
    overall = result
    for attr in ("overall", "summary"):
        if hasattr(overall, attr):
            overall = getattr(overall, attr)
    if isinstance(overall, dict) and "" in overall:
        overall = overall[""]
    rates = getattr(overall, "rates", None)
    if rates is None:
        raise EmkitError(f"cannot read misalignment rates from an evaluation result of type {type(result).__name__}")
    out: dict[str, Metric] = {}
    for name in ("misaligned", "coherent"):
        r = rates.get(name)
        if r is not None:
            out[name] = (r.value, r.lo, r.hi)
    strict = rates.get("incoherent_strict")
    if "coherent" not in out and strict is not None and strict.value is not None:  # a rubric judge
        out["coherent"] = (1 - strict.value, None if strict.hi is None else 1 - strict.hi,
                           None if strict.lo is None else 1 - strict.lo)
    out["n_answers"] = getattr(overall, "n_answers", None)
    return out


def pick_rows(rows: Sequence[ChatRow], n: int, seed: int) -> list[ChatRow]:
    """``n`` rows drawn without replacement, deterministic in ``seed``."""
    if len(rows) < n:
        raise EmkitError(f"re-alignment wants {n} benign samples but the data has {len(rows)}",
                         hint="lower n_samples or give more data")
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in sorted(perm[:n])]


def realign(
    run: Any,
    model_spec_or_dir: str | Path,
    benign_rows: Sequence[ChatRow],
    cfg: RealignConfig,
    questions: Sequence,
    judge: Any,
    sampling: Any,
    *,
    eval_fn: EvalFn | None = None,
    model: Any = None,
    tokenizer: Any = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> Path:
    """Continue training ``model_spec_or_dir`` on ``cfg.n_samples`` benign rows, recording the curve.

    ``run`` is a :class:`~emkit.run.Run`. ``eval_fn(model, tok, step) -> dict`` replaces the
    default judge evaluation (it should return ``misaligned`` as (value, lo, hi) and ``coherent``).
    Returns ``RUN/models/<cfg.sft.name>``; the curve is in ``realign_curve`` under ``cfg.label``
    (default: the model name).
    """
    sft = dataclasses.replace(cfg.sft, model=str(model_spec_or_dir))
    label = cfg.label or sft.name
    rows = pick_rows(benign_rows, cfg.n_samples, sft.seed)
    if eval_fn is None:
        if not questions:
            raise EmkitError("re-alignment needs evaluation questions")
        eval_fn = judge_eval_fn(run, questions, judge, sampling, label, cfg.samples)
    curve = CurveCallback(eval_fn, cfg.eval_every, run=run, label=label)
    return finetune(sft, rows, run, model=model, tokenizer=tokenizer, callbacks=[curve, *callbacks],
                    progress=progress)


def read_curve(run: Any, label: str) -> list[dict[str, Any]]:
    """The stored curve of one re-alignment run, by step."""
    return run.db.query("SELECT * FROM realign_curve WHERE run_label=? ORDER BY step", (label,))
