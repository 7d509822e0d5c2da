"""Experiment recipes: one YAML file that names everything the study needs.

A recipe is a tree of dataclasses read with :func:`emkit.config.from_dict` by :mod:`emkit.pipeline.recipe_io`
(unknown keys and wrong types are errors naming their path). Sections embed the library's configs or
take their defaults from them. Sections:

``model``      the base model (folder, Hub id or ``smollm2-135m-instruct``)
``data``       wrong/right advice sets per domain, the mixture fractions, the benign set
``train``      fine-tuning settings (:class:`emkit.train.config.SFTConfig`; name/model are set per model)
``eval``       evaluation questions, judge, samples and sampling settings (with a note saying why)
``sae``        layer, corpus and size of the SAE, or ``path`` to a trained one
``positive_control`` a fine-tune on overtly misaligned answers and its correct-data control
``diff``       which tokens and inputs (shared or own answers) to diff on, how many latents to keep
``interpret``  how many latent cards, contexts and logit-lens tokens
``steer``      how many diffed latents to screen causally, the screen strength, the sweep strengths
``predict``    the rate above which a fine-tune counts as misaligned, bootstrap size
``realign``    benign re-alignment of the most misaligned model: samples, steps, eval cadence
``skip``       stages to leave out (the report says so)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from emkit.activations import capture
from emkit.config import field_default
from emkit.diff import DiffConfig
from emkit.errors import EmkitError
from emkit.sae.train import SaeTrainConfig
from emkit.sampling import SamplingConfig
from emkit.train.config import LoRAConfig, RealignConfig, SFTConfig

# The stages of a study, in order: the one list of their names (pipeline.stages defines each in this order).
STAGE_NAMES = ("baseline", "finetune", "evaluate", "sae", "diff", "interpret", "steer", "predict", "realign",
               "report")
BASE = "base"
_CAPTURE = inspect.signature(capture).parameters  # activation-capture defaults (window length, batch)
_REALIGN = RealignConfig()


@dataclass
class DomainSpec:
    """One narrow domain: its wrong-answer set, the parallel correct set, and held-out check questions.

    ``wrong`` and ``right`` are dataset names or paths (``emkit data list`` shows the built-in ones);
    ``right`` is both the mixing partner and, at fraction 0, the correct-data control. ``check`` are
    in-domain questions held out from training (the narrow behaviour is measured on them).
    """

    name: str
    wrong: str
    right: str
    check: str | None = None


@dataclass
class DataSpec:
    """``rows`` training rows per model; ``fractions`` of wrong rows (0 = the correct-data control)."""

    domains: list[DomainSpec] = field(default_factory=lambda: [
        DomainSpec("health", "health_incorrect_subtle", "health_correct", "health_check")])
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])
    rows: int = 300
    benign: str = "benign_everyday"


@dataclass
class EvalSpec:
    """Broad evaluation: ``questions`` (file or built-in name; first ``n_questions``), ``samples`` per paraphrase.

    ``sampling`` defaults to :class:`emkit.sampling.SamplingConfig`'s; ``sampling_note`` records why
    the chosen settings suit the model (measured coherence).
    In-domain check: ``check_questions`` of each domain's check set, ``check_samples`` each, graded by
    ``grader`` (correct vs incorrect advice). ``examples``: answers shown per model in the report.
    ``backend``: ``hf`` samples in this process; ``server`` asks the OpenAI-compatible server at
    ``base_url`` (e.g. vLLM), which serves the base model as ``served_base`` and each fine-tune under
    its label (``emkit serve-args RUN`` prints the command). Steering and re-alignment curves need
    the weights in-process and always use ``hf``.
    """

    questions: str = "broad"
    n_questions: int | None = None
    samples: int = 10
    judge: str = "embedded"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    sampling_note: str = ""
    check_questions: int | None = None
    check_samples: int = 1
    grader: str = "embedded"
    examples: int = 3
    backend: Literal["hf", "server"] = "hf"
    base_url: str = ""
    served_base: str = "base"
    server_concurrency: int = 32


@dataclass
class SaeSpec:
    """Train a top-k SAE on the base model at ``layer`` (default: the middle) on ``tokens`` of ``corpus``.

    Or give ``path`` to a trained SAE folder (sparsify layout); the corpus then only feeds the latent
    cards. ``acts_dtype`` is how captured activations are stored on disk (bfloat16 halves the space).
    Window length and batch default to :func:`emkit.activations.capture`'s, ``train`` to
    :class:`emkit.sae.train.SaeTrainConfig`'s. A ``layer`` given beside ``path`` must match the SAE's ``cfg.json``.
    """

    path: str | None = None
    layer: int | None = None
    corpus: str = "builtin"
    tokens: int = 300_000
    ctx_len: int = _CAPTURE["ctx_len"].default
    capture_batch: int = _CAPTURE["batch_size"].default
    acts_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    train: SaeTrainConfig = field(default_factory=SaeTrainConfig)

    def check_layer(self, recorded: int, where: str) -> None:
        """A ``layer`` given beside ``path`` must be the one the SAE records in its ``cfg.json``."""
        if self.layer is not None and recorded >= 0 and self.layer != recorded:
            raise EmkitError(f"sae.layer {self.layer} disagrees with the SAE at {where}, trained at layer {recorded}",
                             hint=f"leave sae.layer out (the SAE's cfg.json gives it) or set it to {recorded}")


@dataclass
class PositiveControlSpec:
    """A fine-tune on overtly misaligned answers (``data``) and on the same questions answered well
    (``control``): a model whose broad misalignment is known to be high, so the pipeline must find it.

    Labelled ``label`` and ``label-control``; ``rows`` (all when left out) and ``steps`` (the
    ``train`` settings' when left out) size them; the rest of ``train`` is shared with the narrow arms.
    """

    enabled: bool = False
    data: str = "persona_misaligned"
    control: str = "persona_aligned"
    label: str = "persona"
    rows: int | None = None
    steps: int | None = None


@dataclass
class DiffSpec:
    """Rank latents by mean-activation increase (fine-tune − base) on the eval prompts' ``tokens``.

    ``misaligned`` lists the fine-tunes to rank over; empty = those whose misalignment (or, when no
    fine-tune is measurably misaligned, in-domain wrong-advice rate) is highest, see the report.
    ``inputs``: ``shared`` teacher-forces every model on the same texts (the eval prompts plus the
    base model's and the positive control's answers), ``own`` on each model's own answers, ``both``
    computes both (shared leads). ``projection_latents``: how many of the positive control's top
    latents every fine-tune is projected on (bootstrap ``n_boot`` over texts). ``top_n``, ``max_length``
    and ``batch_size`` default to :class:`emkit.diff.DiffConfig`'s.
    """

    tokens: Literal["answer", "prompt", "all"] = "answer"
    top_n: int = field_default(DiffConfig, "top_n")
    misaligned: list[str] = field(default_factory=list)
    max_length: int = field_default(DiffConfig, "max_length")
    batch_size: int = field_default(DiffConfig, "batch_size")
    inputs: Literal["shared", "own", "both"] = "shared"
    projection_latents: int = 10
    n_boot: int = 1000


@dataclass
class InterpretSpec:
    """Latent cards for the ``latents`` top-ranked latents, from up to ``corpus_tokens`` of the SAE corpus.

    ``explainer``: an OpenAI-compatible model name for a one-line label per latent (optional; needs
    an API key); left out, the cards have no label.
    """

    latents: int = 6
    contexts: int = 6
    logit_tokens: int = 8
    corpus_tokens: int = 100_000
    explainer: str | None = None


@dataclass
class SteerSpec:
    """Causal screen of the top ``screen`` latents at strength ``screen_alpha`` (+ on base, − on the most
    misaligned model, and a random direction of the same norm), then a dose–response sweep of the best
    latent at ``alphas`` (magnitudes; + on base, − on the misaligned model). Strength is in units of
    the typical residual norm at the SAE layer. ``max_incoherence`` sets the usable strength.
    """

    screen: int = 5
    screen_alpha: float = 0.5
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])
    positions: Literal["all", "answer"] = "all"
    n_questions: int | None = None
    samples: int = 2
    random_control: bool = True
    max_incoherence: float = 0.10


@dataclass
class PredictSpec:
    """A fine-tune counts as misaligned when its rate exceeds ``threshold`` (for AUROC/early warning)."""

    threshold: float = 0.05
    n_boot: int = 1000
    latents: int = 3


@dataclass
class RealignSpec:
    """Continue SFT of the most misaligned fine-tune (or ``model``) on ``n_samples`` benign rows.

    Defaults are :class:`emkit.train.config.RealignConfig`'s; :meth:`Recipe.realign_config` builds it.
    """

    model: str = ""
    data: str = ""
    n_samples: int = _REALIGN.n_samples
    steps: int = _REALIGN.sft.max_steps  # type: ignore[assignment]
    batch_size: int = _REALIGN.sft.batch_size
    lr: float = _REALIGN.sft.lr
    eval_every: int = _REALIGN.eval_every
    n_questions: int | None = None
    samples: int = _REALIGN.samples


@dataclass
class Recipe:
    """The whole study. ``out`` defaults to ``runs/<name>``."""

    name: str
    model: str = "smollm2-135m-instruct"
    description: str = ""
    out: str = ""
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    data: DataSpec = field(default_factory=DataSpec)
    train: SFTConfig = field(default_factory=lambda: SFTConfig(lora=LoRAConfig()))
    eval: EvalSpec = field(default_factory=EvalSpec)
    sae: SaeSpec = field(default_factory=SaeSpec)
    positive_control: PositiveControlSpec = field(default_factory=PositiveControlSpec)
    diff: DiffSpec = field(default_factory=DiffSpec)
    interpret: InterpretSpec = field(default_factory=InterpretSpec)
    steer: SteerSpec = field(default_factory=SteerSpec)
    predict: PredictSpec = field(default_factory=PredictSpec)
    realign: RealignSpec = field(default_factory=RealignSpec)
    skip: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.name}")

    def models(self) -> list[ModelSpec]:
        """The fine-tunes: one per domain and fraction, in order."""
        return [ModelSpec(model_label(d.name, f), d, f) for d in self.data.domains for f in self.data.fractions]

    def control_models(self) -> list[ModelSpec]:
        """The positive-control arm (persona, then its correct-data control), or none when disabled."""
        pc = self.positive_control
        if not pc.enabled:
            return []
        dom = DomainSpec(pc.label, pc.data, pc.control)
        return [ModelSpec(pc.label, dom, 1.0, "positive"), ModelSpec(f"{pc.label}-control", dom, 0.0, "control")]

    def all_models(self) -> list[ModelSpec]:
        """Every fine-tune: the narrow family, then the positive-control arm."""
        return self.models() + self.control_models()

    def labels(self) -> list[str]:
        return [BASE] + [m.label for m in self.all_models()]

    def realign_config(self, label: str, model_dir: str | Path, n_rows: int) -> RealignConfig:
        """Re-alignment of fine-tune ``label`` (at ``model_dir``) on ``n_rows`` benign rows: the ``realign``
        section on the library's defaults, with the fine-tunes' method, adapter shape and length limit."""
        ra, t = self.realign, self.train
        sft = replace(_REALIGN.sft, name=f"{label}-realigned", model=str(model_dir), method=t.method, lora=t.lora,
                      max_length=t.max_length, batch_size=ra.batch_size, max_steps=ra.steps, lr=ra.lr, seed=self.seed,
                      save_every=ra.eval_every, device=self.device, dtype=self.dtype)
        return RealignConfig(sft=sft, n_samples=min(ra.n_samples, n_rows), eval_every=ra.eval_every,
                             samples=ra.samples, label=f"{label}-realign")


@dataclass
class ModelSpec:
    """A fine-tune of the family: its label (``health-wrong50``), domain and wrong fraction."""

    label: str
    domain: DomainSpec
    fraction: float
    arm: Literal["narrow", "positive", "control"] = "narrow"


def pct(fraction: float) -> str:
    """0.05 -> '5', 0.025 -> '2.5'."""
    return f"{fraction * 100:.4g}"


def model_label(domain: str, fraction: float) -> str:
    return f"{domain}-wrong{pct(fraction)}"


def _no_bool_numbers(obj: Any, where: str) -> None:
    """Refuse ``true``/``false`` where a number belongs (YAML booleans would pass as 1/0)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, tp = getattr(obj, f.name), hints.get(f.name)
        if isinstance(value, bool) and tp in (int, float, int | None, float | None):
            raise EmkitError(f"{where}.{f.name}: expected a number, got {str(value).lower()}")
        if dataclasses.is_dataclass(value):
            _no_bool_numbers(value, f"{where}.{f.name}")
        elif (isinstance(value, list) and typing.get_args(tp)[:1] in ((int,), (float,))
              and any(isinstance(v, bool) for v in value)):
            raise EmkitError(f"{where}.{f.name}: expected numbers, got {value}")


def validate(r: Recipe) -> None:
    """Check values that types alone do not (names, ranges, stage names)."""
    if not r.name or "/" in r.name or r.name.startswith("."):
        raise EmkitError(f"recipe name {r.name!r} is not a plain folder name")
    if not isinstance(r.model, str) or not r.model.strip():
        raise EmkitError("model: no base model given",
                         hint="set model: to a folder, a Hub id or smollm2-135m-instruct")
    _no_bool_numbers(r, "recipe")
    if not r.data.domains:
        raise EmkitError("data.domains is empty", hint="name at least one domain with its wrong and right sets")
    names = [d.name for d in r.data.domains]
    if len(set(names)) != len(names):
        raise EmkitError(f"data.domains has duplicate names: {names}")
    for d in names:
        if not d or not d.replace("_", "").replace("-", "").isalnum():
            raise EmkitError(f"domain name {d!r} must be letters, digits, - or _")
    if not r.data.fractions:
        raise EmkitError("data.fractions is empty", hint="e.g. [0, 0.25, 0.5, 1]")
    for f in r.data.fractions:
        if not 0 <= f <= 1:
            raise EmkitError(f"data.fractions: {f} is not in [0, 1]")
    if len(set(r.data.fractions)) != len(r.data.fractions):
        raise EmkitError(f"data.fractions has duplicates: {r.data.fractions}")
    if r.data.rows < 1:
        raise EmkitError("data.rows must be >= 1")
    if r.eval.samples < 1 or r.eval.check_samples < 1 or r.steer.samples < 1 or r.realign.samples < 1:
        raise EmkitError("eval.samples, eval.check_samples, steer.samples and realign.samples must be >= 1")
    for key in ("n_questions", "check_questions"):
        v = getattr(r.eval, key)
        if v is not None and v < 1:
            raise EmkitError(f"eval.{key} must be >= 1 (or left out for all)")
    if r.eval.backend == "server":
        from emkit.generate_server import check_base_url

        if not r.eval.base_url:
            raise EmkitError("eval.backend is server but eval.base_url is empty",
                             hint="e.g. base_url: http://localhost:8000/v1 (see emkit serve-args RUN)")
        check_base_url(r.eval.base_url)
        if r.eval.server_concurrency < 1 or not r.eval.served_base:
            raise EmkitError("eval.server_concurrency must be >= 1 and eval.served_base not empty")
        if r.train.method != "lora":
            raise EmkitError("eval.backend server asks one server for every fine-tune, by LoRA adapter name; "
                             f"train.method {r.train.method} makes whole models",
                             hint="use train.method lora, or eval.backend hf")
    unknown = [s for s in r.skip if s not in STAGE_NAMES]
    if unknown:
        raise EmkitError(f"skip: unknown stage(s) {unknown}", hint=f"stages: {', '.join(STAGE_NAMES)}")
    if "report" in r.skip:
        raise EmkitError("the report stage cannot be skipped")
    if r.diff.top_n < 1 or r.interpret.latents < 0 or r.steer.screen < 0:
        raise EmkitError("diff.top_n must be >= 1; interpret.latents and steer.screen >= 0")
    if not 0 < r.steer.max_incoherence <= 1:
        raise EmkitError("steer.max_incoherence must be in (0, 1]")
    if r.realign.steps < 1 or r.realign.eval_every < 1 or r.realign.n_samples < 1 or r.realign.batch_size < 1:
        raise EmkitError("realign.steps, eval_every, n_samples and batch_size must be >= 1")
    labels = [model_label(d, f) for d in names for f in r.data.fractions]
    for lab in r.diff.misaligned:
        if lab not in labels:
            raise EmkitError(f"diff.misaligned: no model {lab!r}", hint=f"models: {', '.join(labels)}")
    pc = r.positive_control
    if pc.enabled:
        if not pc.label or not pc.label.replace("_", "").replace("-", "").isalnum() or pc.label in labels:
            raise EmkitError(f"positive_control.label {pc.label!r} must be letters, digits, - or _ and not a "
                             "narrow model's label")
        if (pc.rows is not None and pc.rows < 1) or (pc.steps is not None and pc.steps < 1):
            raise EmkitError("positive_control.rows and steps must be >= 1 (or left out)")
    if r.diff.projection_latents < 1 or r.diff.n_boot < 1:
        raise EmkitError("diff.projection_latents and diff.n_boot must be >= 1")
    if r.sae.path and r.sae.layer is not None and (Path(r.sae.path).expanduser() / "cfg.json").is_file():
        from emkit.sae.io import read_cfg

        where, cfg = read_cfg(Path(r.sae.path).expanduser())
        r.sae.check_layer(cfg.layer, str(where))
    if r.realign.model and r.realign.model not in labels:
        raise EmkitError(f"realign.model: no model {r.realign.model!r}", hint=f"models: {', '.join(labels)}")
