"""Training callbacks: evaluate behaviour (and, via a hook, internals) every k optimizer steps.

A callback sees a :class:`StepContext` at the start of training, after every optimizer step and at
the end. :class:`EvalCallback` runs any ``eval_fn(model, tokenizer, step) -> dict`` every ``every``
steps and stores each metric in the ``training_evals`` table of a run's ``results.sqlite``.
:class:`LatentMonitor` is the hook point for a latent probe: a list of probe prompts and a function
``fn(model, tokenizer, prompts) -> float | dict`` computed at the same cadence (e.g. the mean
activation of an SAE latent on the probes). Callbacks run with the model in eval mode, without
gradients and with the random state saved and restored, so they never change the training result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from emkit.results import register_table

log = logging.getLogger(__name__)

register_table(
    "training_evals",
    """CREATE TABLE IF NOT EXISTS training_evals (
        run_label TEXT NOT NULL,      -- which training run (e.g. the model name)
        step INTEGER NOT NULL,        -- optimizer step (0 = before training)
        samples_seen INTEGER NOT NULL,
        metric TEXT NOT NULL,
        value REAL,
        lo REAL,                      -- interval, when the metric has one
        hi REAL,
        created REAL NOT NULL DEFAULT (julianday('now')),
        PRIMARY KEY (run_label, step, metric)
    )""",
)

Metric = float | int | tuple | dict | None
EvalFn = Callable[[Any, Any, int], dict[str, Metric]]


@dataclass
class StepContext:
    """What a callback sees: the live model, where training stands and the last step's numbers."""

    model: Any
    tokenizer: Any
    step: int
    total_steps: int
    samples_seen: int
    tokens_seen: int = 0
    logs: dict[str, Any] = field(default_factory=dict)
    out_dir: Any = None


class Callback:
    """Base class: override any of the three hooks."""

    def on_train_begin(self, ctx: StepContext) -> None:  # noqa: B027 - optional hook
        pass

    def on_step_end(self, ctx: StepContext) -> None:  # noqa: B027 - optional hook
        pass

    def on_train_end(self, ctx: StepContext) -> None:  # noqa: B027 - optional hook
        pass


def _split(value: Metric) -> tuple[float | None, float | None, float | None]:
    """A metric value as (value, lo, hi): a number, a (value, lo, hi) tuple or a dict with those keys."""
    if value is None:
        return None, None, None
    if isinstance(value, dict):
        return value.get("value"), value.get("lo"), value.get("hi")
    if isinstance(value, tuple | list):
        v = list(value) + [None, None]
        return v[0], v[1], v[2]
    return float(value), None, None


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def quiet_eval(model: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in eval mode without gradients, leaving the RNG and the train/eval mode as found."""
    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            with torch.no_grad():
                return fn()
        finally:
            model.train(was_training)


class EvalCallback(Callback):
    """Every ``every`` steps (and before training if ``at_start``) call ``eval_fn`` and record it.

    ``history`` keeps ``(step, samples_seen, metrics)``; with a ``run`` the metrics also go to
    ``training_evals`` under ``label`` (replacing rows of the same step and metric, so a resumed
    run that evaluates a step again overwrites it with the same model's numbers).
    """

    def __init__(self, eval_fn: EvalFn, every: int, *, run: Any = None, label: str = "train",
                 at_start: bool = True, at_end: bool = True):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.eval_fn = eval_fn
        self.every = every
        self.run = run
        self.label = label
        self.at_start = at_start
        self.at_end = at_end
        self.history: list[tuple[int, int, dict[str, Metric]]] = []
        self._last = -1

    def is_done(self, step: int) -> bool:
        """Whether ``step`` needs no evaluation (subclasses may look at stored results)."""
        return False

    def evaluate(self, ctx: StepContext) -> dict[str, Metric] | None:
        if ctx.step == self._last or self.is_done(ctx.step):
            return None
        self._last = ctx.step
        t0 = time.time()
        metrics = quiet_eval(ctx.model, lambda: self.eval_fn(ctx.model, ctx.tokenizer, ctx.step)) or {}
        log.info("eval at step %d (%.1fs): %s", ctx.step, time.time() - t0, metrics)
        self.history.append((ctx.step, ctx.samples_seen, metrics))
        if self.run is not None:
            rows = []
            for name, value in metrics.items():
                v, lo, hi = _split(value)
                rows.append(dict(run_label=self.label, step=ctx.step, samples_seen=ctx.samples_seen,
                                 metric=name, value=_finite(v), lo=_finite(lo), hi=_finite(hi)))
            self.run.db.insert("training_evals", rows, replace=True)
        return metrics

    def on_train_begin(self, ctx: StepContext) -> None:
        if self.at_start and ctx.step == 0:
            self.evaluate(ctx)

    def on_step_end(self, ctx: StepContext) -> None:
        if ctx.step % self.every == 0:
            self.evaluate(ctx)

    def on_train_end(self, ctx: StepContext) -> None:
        if self.at_end:
            self.evaluate(ctx)


class LatentMonitor(EvalCallback):
    """Track a scalar (or several) computed from the model's internals on fixed probe prompts.

    ``fn(model, tokenizer, prompts)`` returns a number or a dict of numbers; they are stored like
    any evaluation metric, prefixed ``latent/`` (or ``name/``).
    """

    def __init__(self, prompts: Sequence[str], fn: Callable[[Any, Any, Sequence[str]], Any], every: int, *,
                 name: str = "latent", run: Any = None, label: str = "train", at_start: bool = True):
        if not prompts:
            raise ValueError("a latent monitor needs at least one probe prompt")
        self.prompts = list(prompts)

        def eval_fn(model: Any, tok: Any, step: int) -> dict[str, Metric]:
            out = fn(model, tok, self.prompts)
            if isinstance(out, dict):
                return {f"{name}/{k}": v for k, v in out.items()}
            return {name: out}

        super().__init__(eval_fn, every, run=run, label=label, at_start=at_start)


def call_all(callbacks: Sequence[Callback], hook: str, ctx: StepContext) -> None:
    for cb in callbacks:
        getattr(cb, hook)(ctx)


def training_evals(db: Any, label: str) -> list[dict[str, Any]]:
    """The ``training_evals`` of ``label`` by step: ``{"step", "samples_seen", METRIC: value, ...}``, in step order."""
    rows = db.query("SELECT step, samples_seen, metric, value FROM training_evals WHERE run_label=? ORDER BY step",
                    (label,))
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        by_step.setdefault(row["step"], {"step": row["step"], "samples_seen": row["samples_seen"]})[row["metric"]] = \
            row["value"]
    return [by_step[st] for st in sorted(by_step)]
