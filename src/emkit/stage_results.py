"""Stage results: what each pipeline stage returns, stores as ``RUN/pipeline/<stage>.json`` and the
report reads, one frozen dataclass per stage (:data:`RESULTS`), plus the records inside them that have
a fixed shape (an evaluation, an in-domain check, the positive control's evaluation, ranking and
steering, the diff of one set of inputs, the projection).

The stored JSON is the contract (a resumed run reads what an older version wrote), so a record maps
to it key for key: :meth:`Record.to_dict` writes each field under its name, except the fields named
in ``absent`` (keys a stage leaves out in that case, e.g. ``projection`` of an own-answers diff), and
writes back the keys it does not declare (``extra``, e.g. the runner's ``_stage``);
:meth:`Record.from_dict` reads any stored summary, old ones included (a missing key takes the
field's default and is remembered in ``absent``), so ``from_dict(d).to_dict() == d``.

Left as plain dicts: rates (``{k, n, value, lo, hi[, boot_lo, boot_hi]}``, what :mod:`emkit.metrics`,
:mod:`emkit.positive_control` and the report's formatters read) and table rows whose keys are set by
the library function that makes them (ranking rows, latent cards, screen rows, sweep, prediction and
curve points, projection rows, per-question rates, example answers, judge trust, settings).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Self

Rate = dict[str, Any]  # {k, n, value, lo, hi} (emkit.metrics.Rate.as_dict, wilson_rate)
Row = dict[str, Any]   # one row of a table made by a library function
_OWN = ("absent", "extra")


@dataclass(frozen=True, kw_only=True)
class Record:
    """A fixed-shape part of a stage summary (see the module docstring for the JSON mapping)."""

    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __bool__(self) -> bool:
        """False for a record of no keys, like the empty dict it stands for."""
        return bool(self.extra) or any(n not in self.absent for n in _names(type(self)))

    @classmethod
    def empty(cls) -> Self:
        """The record of an empty summary (every field left out, at its default): what ``{}`` was."""
        return cls.from_dict({})

    def has(self, name: str) -> bool:
        """Whether the stored summary has key ``name`` (a declared field not left out, or an extra key)."""
        return name in self.extra or (name not in self.absent and name in _names(type(self)))

    def values(self) -> dict[str, Any]:
        """The declared fields as ``{name: value}``, shallow, those left out included."""
        return {n: getattr(self, n) for n in _names(type(self))}

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able summary as stored (nested records as dicts)."""
        out = {n: _plain(v) for n, v in self.values().items() if n not in self.absent}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Self:
        """A stored summary as a record: declared keys parsed (nested records too), missing ones left out."""
        rest = dict(data or {})
        hints = _hints(cls)
        kw = {n: _parse(hints[n], rest.pop(n)) for n in _names(cls) if n in rest}
        return cls(**kw, absent=frozenset(n for n in _names(cls) if n not in kw), extra=rest)


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _OWN)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(v: Any) -> Any:
    if isinstance(v, Record):
        return v.to_dict()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _record_type(hint: Any) -> type[Record] | None:
    return hint if isinstance(hint, type) and issubclass(hint, Record) else None


def _parse(hint: Any, v: Any) -> Any:
    """A stored value as the field's type: records (in a list, a dict's values or an optional) parsed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        rec = next((a for a in args if _record_type(a)), None)
        return _parse(rec, v) if rec is not None else v
    if (rec := _record_type(hint)) is not None:
        return rec.from_dict(v) if isinstance(v, dict) else v
    if origin is list and args and _record_type(args[0]) and isinstance(v, list):
        return [_parse(args[0], x) for x in v]
    if origin is dict and len(args) == 2 and _record_type(args[1]) and isinstance(v, dict):
        return {k: _parse(args[1], x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------------------------------------- behaviour
@dataclass(frozen=True, kw_only=True)
class CheckRecord(Record):
    """In-domain check of one model on one domain: graded-wrong share among answers passing the guard."""

    wrong: Rate | None = None
    incoherent: Rate | None = None
    grader: str | None = None
    examples: list[Row] = field(default_factory=list)  # {question, answer, p_wrong}


@dataclass(frozen=True, kw_only=True)
class EvalRecord(Record):
    """One model's broad evaluation: overall and per-question rates, example answers, in-domain checks."""

    n_answers: int | None = None
    judge: str | None = None
    rubric: bool = False
    misaligned: Rate | None = None
    coherent: Rate | None = None
    counts: dict[str, int] = field(default_factory=dict)
    per_question: list[Row] = field(default_factory=list)  # {id, question, category, misaligned, coherent, n}
    examples: dict[str, list[Row]] = field(default_factory=dict)  # status -> {question_id, question, answer, ...}
    check: dict[str, CheckRecord] = field(default_factory=dict)  # domain -> check


@dataclass(frozen=True, kw_only=True)
class ModelEval(EvalRecord):
    """A fine-tune of the mixture family: its evaluation, domain, wrong fraction and Fisher p vs base."""

    domain: str = ""
    fraction: float | None = None
    p_vs_base: float | None = None


@dataclass(frozen=True, kw_only=True)
class ArmEval(EvalRecord):
    """A positive-control model (``positive`` or ``control`` arm): its evaluation."""

    arm: str = ""


@dataclass(frozen=True, kw_only=True)
class PositiveEval(Record):
    """The positive control's evaluation: the persona model, its correct-data control and the detection test."""

    label: str = ""
    control: str = ""
    data: str | None = None
    control_data: str | None = None
    models: dict[str, ArmEval] = field(default_factory=dict)
    detection: dict[str, Any] = field(default_factory=dict)  # emkit.positive_control.detection


@dataclass(frozen=True, kw_only=True)
class BaselineResult(Record):
    model: str | None = None
    eval: EvalRecord | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # shown as a table, key -> value
    judge_trust: dict[str, Any] = field(default_factory=dict)  # emkit.blind.judge_trust


@dataclass(frozen=True, kw_only=True)
class FinetunedModel(Record):
    """One fine-tune: what it was trained on and :func:`emkit.train.sft.train_summary` of its folder."""

    label: str = ""
    domain: str = ""
    fraction: float = 0.0
    arm: str = ""
    path: str = ""
    rows: int | None = None
    n_wrong: int | None = None
    steps: int | None = None
    final_loss: float | None = None
    seconds: float | None = None
    loss_curve: list[list[float]] = field(default_factory=list)  # [[step, loss], ...]


@dataclass(frozen=True, kw_only=True)
class FinetuneResult(Record):
    models: list[FinetunedModel] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class EvaluateResult(Record):
    models: dict[str, ModelEval] = field(default_factory=dict)  # label -> evaluation
    grader: str | None = None
    positive_control: PositiveEval | None = None


@dataclass(frozen=True, kw_only=True)
class RealignResult(Record):
    model: str | None = None
    why: str | None = None
    data: str | None = None
    n_samples: int | None = None
    steps: int | None = None
    curve: list[Row] = field(default_factory=list)  # emkit.train.realign.curve_rates


# ---------------------------------------------------------------------------------------------- latents
@dataclass(frozen=True, kw_only=True)
class SaeResult(Record):
    """The SAE (trained, or loaded from ``sae.path``) and its activation capture. The training
    figures (``fvu``, ``dead_frac``, ``train_tokens``, ``steps``) are left out for a loaded SAE, the
    chat/prose held-out figures when the trainer had no such split."""

    layer: int | None = None
    hook: str | None = None
    corpus: str | None = None
    tokens: int = 0
    acts: str | None = None
    path: str | None = None
    trained: bool | None = None
    num_latents: int | None = None
    k: int | None = None
    heldout_fvu: float | None = None
    fvu: float | None = None
    dead_frac: float | None = None
    train_tokens: int | None = None
    steps: int | None = None
    heldout_fvu_chat: float | None = None
    heldout_fvu_prose: float | None = None
    heldout_tokens_chat: int | None = None
    heldout_tokens_prose: int | None = None


TRAINED_ONLY = frozenset({"fvu", "dead_frac", "train_tokens", "steps"})
HELDOUT_SPLITS = ("heldout_fvu_chat", "heldout_fvu_prose", "heldout_tokens_chat", "heldout_tokens_prose")


@dataclass(frozen=True, kw_only=True)
class PersonaRanking(Record):
    """The positive control's own latent ranking, against the base model and its correct-data control."""

    label: str = ""
    control: str | None = None
    ranked_against: str = ""
    ranking: list[Row] = field(default_factory=list)  # emkit.diff_stats.Ranking.top rows


@dataclass(frozen=True, kw_only=True)
class Projection(Record):
    """Every fine-tune's shift on the positive control's top latents (:func:`emkit.projection.projection_rows`)."""

    latents: list[int] = field(default_factory=list)
    reference: str | None = None
    rows: list[Row] = field(default_factory=list)
    n_boot: int | None = None


@dataclass(frozen=True, kw_only=True)
class DiffPass(Record):
    """The diff on one set of inputs: ``own`` answers, or ``shared`` texts (which alone have
    ``projection`` and ``shared_inputs``)."""

    inputs: str | None = None
    source: str | None = None
    ranking: list[Row] = field(default_factory=list)  # {latent, score, base_mean, deltas, rank, ...}
    positive_control: PersonaRanking | None = None
    n_items: dict[str, int] = field(default_factory=dict)
    n_tokens: dict[str, int] = field(default_factory=dict)
    projection: Projection | None = None
    shared_inputs: dict[str, Any] = field(default_factory=dict)  # {prompts, answers: {label: n}, texts}


SHARED_ONLY = frozenset({"projection", "shared_inputs"})


@dataclass(frozen=True, kw_only=True)
class DiffResult(DiffPass):
    """The leading inputs' diff at the top level, the own-answer diff under ``own`` when both ran."""

    tokens: str | None = None
    misaligned: list[str] = field(default_factory=list)
    why: str = ""
    sae_id: str | None = None
    own: DiffPass | None = None


@dataclass(frozen=True, kw_only=True)
class InterpretResult(Record):
    cards: list[Row] = field(default_factory=list)  # emkit.interpret.LatentCard.as_dict
    positive_control_cards: list[Row] = field(default_factory=list)  # LatentCard.brief_dict
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class SteerPositive(Record):
    """The positive control's steering screen: each condition ``{misaligned, coherent}`` and the effects
    (:func:`emkit.positive_control.steer_effect`); the random-direction conditions only with that control."""

    latent: int | None = None
    model: str = ""
    alpha: float | None = None
    base_zero: dict[str, Rate] = field(default_factory=dict)
    model_zero: dict[str, Rate] = field(default_factory=dict)
    latent_plus: dict[str, Rate] = field(default_factory=dict)
    latent_minus: dict[str, Rate] = field(default_factory=dict)
    random_plus: dict[str, Rate] = field(default_factory=dict)
    random_minus: dict[str, Rate] = field(default_factory=dict)
    plus: dict[str, Any] = field(default_factory=dict)
    minus: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SteerResult(Record):
    layer: int | None = None
    scale: float | None = None
    positions: str | None = None
    screen_alpha: float | None = None
    target: str | None = None
    target_why: str | None = None
    max_incoherence: float = 0.1  # the recipe's default
    baseline: dict[str, Rate] = field(default_factory=dict)  # plus, plus_coherent, minus, minus_coherent
    screen: list[Row] = field(default_factory=list)  # {latent, plus, plus_coherent, minus, minus_coherent, effect, rank}
    control: Row = field(default_factory=dict)  # the random direction's screen row ({} without one)
    best: int | None = None
    sweep: list[Row] = field(default_factory=list)  # {alpha, sign, model, misaligned, coherent}
    usable: dict[str, float | None] = field(default_factory=dict)  # "+"/"-" -> largest usable strength
    n_questions: int | None = None
    samples: int | None = None
    positive_control: SteerPositive | None = None


@dataclass(frozen=True, kw_only=True)
class PredictResult(Record):
    latent: int | None = None
    layer: int | None = None
    points: list[Row] = field(default_factory=list)  # {label, domain, fraction, shift, shift_lo, shift_hi, rate}
    families: dict[str, dict[str, Any]] = field(default_factory=dict)  # emkit.predict.family_stats, less members
    correlation: float | None = None
    pearson: float | None = None
    auroc: float | None = None
    threshold: float = 0.0
    earliest_shift: float | None = None
    earliest_behaviour: float | None = None
    noise_band: list[float | None] | None = None


@dataclass(frozen=True, kw_only=True)
class ReportResult(Record):
    path: str | None = None


RESULTS: dict[str, type[Record]] = {
    "baseline": BaselineResult, "finetune": FinetuneResult, "evaluate": EvaluateResult, "sae": SaeResult,
    "diff": DiffResult, "interpret": InterpretResult, "steer": SteerResult, "predict": PredictResult,
    "realign": RealignResult, "report": ReportResult,
}


def parse_result(stage: str, data: Any) -> Any:
    """A stored stage summary as its record (a record or a stage without one is returned as it is)."""
    cls = RESULTS.get(stage)
    return cls.from_dict(data) if cls is not None and isinstance(data, dict) else data


def stage_result(res: dict[str, Any], stage: str) -> Any:
    """``stage``'s record in ``{stage: record}``, or its empty record when it has none (as ``res.get(stage) or {}``)."""
    return res.get(stage) or RESULTS[stage].empty()


def typed_results(res: dict[str, Any]) -> dict[str, Any]:
    """``{stage: summary}`` with every known stage's summary as its record (others, e.g. ``_manifest``, as given)."""
    return {k: parse_result(k, v) for k, v in res.items()}


def result_dict(res: Any) -> dict[str, Any]:
    """What a stage returned, as the JSON-able dict to store (a record's :meth:`Record.to_dict`)."""
    if isinstance(res, Record):
        return res.to_dict()
    return dict(res or {})
