"""The ten stages of the study, what each reads from the recipe, and rough time estimates.

Estimates use rates measured on this project's reference machine (2 CPU cores, the bundled
SmolLM2-135M model) and scale them by model size and device; they are for planning, not promises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emkit.pipeline.behaviour import stage_baseline, stage_evaluate, stage_finetune, stage_realign
from emkit.pipeline.context import Context, Stage
from emkit.pipeline.latents import stage_diff, stage_interpret, stage_sae
from emkit.pipeline.prediction import stage_predict
from emkit.pipeline.recipe import STAGE_NAMES, Recipe
from emkit.pipeline.steering import stage_steer
from emkit.stage_results import RESULTS, ReportResult

# Reference rates: the bundled 135M model, float32, one thread on a shared 2-core CPU, fitted to
# the stage times of a measured smoke run (an idle machine is faster; estimates err long).
GEN_TOKENS_PER_S = 30.0        # batched sampling
TRAIN_S_PER_ROW = 1.4          # LoRA SFT, rows of <= 256 tokens, checkpoints included
CAPTURE_TOKENS_PER_S = 500.0   # forward up to the middle layer
SAE_TOKENS_PER_S = 8000.0      # top-k SAE training at 4096 latents
JUDGE_ANSWERS_PER_S = 10.0     # embedded judge (and grader)
LOAD_S = 6.0                   # loading a model (+ adapter), or a judge
REF_PARAMS = 135e6


def size_factor(r: Recipe) -> float:
    """How much slower than the reference a step is: model size ratio, divided for a GPU."""
    params = REF_PARAMS
    cfg = Path(r.model).expanduser() / "config.json"
    if cfg.is_file():
        try:
            c = json.loads(cfg.read_text())
            h, n, v = c.get("hidden_size", 576), c.get("num_hidden_layers", 30), c.get("vocab_size", 49152)
            params = 12 * n * h * h + v * h
        except (json.JSONDecodeError, TypeError):
            pass
    elif "/" in r.model and not r.model.startswith((".", "/")):
        params = 1.5e9  # a Hub id: assume a small instruct model
    gpu = r.device.startswith("cuda") or (r.device == "auto" and _has_cuda())
    return max(0.05, params / REF_PARAMS) / (25.0 if gpu else 1.0)


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def _n_questions(r: Recipe, n: int | None) -> int:
    if n is not None:
        return n
    return 62 if r.eval.questions == "broad" else 50


def _answers_s(r: Recipe, n_answers: int) -> float:
    toks = n_answers * r.eval.sampling.max_new_tokens * 0.8
    return toks / GEN_TOKENS_PER_S * size_factor(r) + n_answers / JUDGE_ANSWERS_PER_S


def _eval_s(r: Recipe) -> float:
    n = _n_questions(r, r.eval.n_questions) * r.eval.samples
    checks = sum(1 for d in r.data.domains if d.check) and (r.eval.check_questions or 40) * r.eval.check_samples
    return _answers_s(r, n + checks) + LOAD_S


def _pc(r: Recipe) -> dict[str, Any]:
    """The positive-control section, only when enabled (so turning nothing on changes no stage hash)."""
    return {"positive_control": r.positive_control} if r.positive_control.enabled else {}


def _finetune_s(r: Recipe) -> float:
    pc = r.positive_control
    arm = _train_s(r, pc.rows or 320, pc.steps) * len(r.control_models())
    return len(r.models()) * _train_s(r) + arm


def _train_s(r: Recipe, rows: int | None = None, steps: int | None = None) -> float:
    t = r.train
    steps = steps or t.max_steps or max(1, int((rows or r.data.rows) * t.epochs / (t.batch_size * t.grad_accum)))
    per_row = TRAIN_S_PER_ROW * (1.6 if t.method == "full" else 1.0) * min(1.0, t.max_length / 256) ** 0.5
    return steps * t.batch_size * t.grad_accum * per_row * size_factor(r) + LOAD_S


def est_sae(r: Recipe) -> float:
    s = r.sae
    tokens = r.interpret.corpus_tokens if s.path else max(s.tokens, r.interpret.corpus_tokens)
    t = tokens / CAPTURE_TOKENS_PER_S * size_factor(r)
    if not s.path:
        t += s.tokens * s.train.epochs / SAE_TOKENS_PER_S * (s.train.num_latents / 4096)
    return t + LOAD_S


def est_steer(r: Recipe) -> float:
    n = _n_questions(r, r.steer.n_questions or r.eval.n_questions) * r.steer.samples
    conds = 2 * (r.steer.screen + int(r.steer.random_control) + 1) + 2 * len({abs(a) for a in r.steer.alphas} - {0})
    conds += 2 * (2 + int(r.steer.random_control)) if r.positive_control.enabled else 0
    return _answers_s(r, n * conds) + 2 * LOAD_S


def est_realign(r: Recipe) -> float:
    ra = r.realign
    n = _n_questions(r, ra.n_questions or r.eval.n_questions) * ra.samples
    evals = ra.steps // ra.eval_every + 1
    return ra.steps * ra.batch_size * TRAIN_S_PER_ROW * size_factor(r) + evals * _answers_s(r, n) + LOAD_S


def stage_report(ctx: Context) -> ReportResult:
    from emkit.report import write_report

    path = write_report(ctx.run.path, skip=ctx.recipe.skip)
    return ReportResult(path=str(path))


def _specs() -> list[dict[str, Any]]:
    """Each stage's title, dependencies, recipe sections, function and time estimate, in STAGE_NAMES' order."""
    return [
        dict(title="evaluate the base model", deps=(),
             sections=lambda r: {"model": r.model, "eval": r.eval, "domains": r.data.domains, "dtype": r.dtype},
             fn=stage_baseline, estimate=_eval_s),
        dict(title="fine-tune one model per domain and wrong-data fraction", deps=(),
             sections=lambda r: {"model": r.model, "data": r.data, "train": r.train, "seed": r.seed, "dtype": r.dtype,
                                 **_pc(r)},
             fn=stage_finetune, estimate=_finetune_s),
        dict(title="evaluate each fine-tune (broad + in-domain questions)", deps=("baseline", "finetune"),
             sections=lambda r: {"eval": r.eval}, fn=stage_evaluate,
             estimate=lambda r: len(r.all_models()) * _eval_s(r)),
        dict(title="train the SAE on the base model (or load it)", deps=(),
             sections=lambda r: {"model": r.model, "sae": r.sae, "corpus_tokens": r.interpret.corpus_tokens,
                                 "dtype": r.dtype},
             fn=stage_sae, estimate=est_sae),
        dict(title="rank latents by activation increase in the misaligned fine-tunes", deps=("sae", "evaluate"),
             sections=lambda r: {"diff": r.diff}, fn=stage_diff,
             estimate=lambda r: (len(r.all_models()) + 1) * (LOAD_S + _n_questions(r, r.eval.n_questions) * r.eval.samples
                                                             * 0.1 * size_factor(r)) * (2 if r.diff.inputs == "both" else 1)),
        dict(title="latent cards: top contexts, logit lens, histograms", deps=("diff",),
             sections=lambda r: {"interpret": r.interpret}, fn=stage_interpret,
             estimate=lambda r: 10 + r.interpret.corpus_tokens / 50000.0 * r.interpret.latents),
        dict(title="causal screen (+ on base, − on a misaligned model) and dose–response", deps=("diff", "evaluate"),
             sections=lambda r: {"steer": r.steer, "eval": r.eval, "seed": r.seed}, fn=stage_steer, estimate=est_steer),
        dict(title="latent shift vs misalignment across the family; early warning", deps=("diff", "evaluate"),
             sections=lambda r: {"predict": r.predict}, fn=stage_predict,
             estimate=lambda r: (len(r.models()) + 1) * (LOAD_S + 2) + len(r.models())
             * _n_questions(r, r.eval.n_questions) * r.eval.samples / JUDGE_ANSWERS_PER_S, soft=("steer",)),
        dict(title="re-align the most misaligned model on benign data", deps=("evaluate",),
             sections=lambda r: {"realign": r.realign, "benign": r.data.benign, "eval": r.eval, "train": r.train},
             fn=stage_realign, estimate=est_realign),
        dict(title="render report/index.html", deps=(), sections=lambda r: {}, fn=stage_report,
             estimate=lambda r: 5.0),
    ]


def _named(name: str, spec: dict[str, Any]) -> Stage:
    """Stage ``name`` (from :data:`STAGE_NAMES`, the one list of names); its function must be ``stage_<name>``
    and its result record in :data:`emkit.stage_results.RESULTS` under the same name."""
    if spec["fn"].__name__ != f"stage_{name}":
        raise RuntimeError(f"stage {name!r} is paired with {spec['fn'].__name__}: _specs() is out of STAGE_NAMES' order")
    if name not in RESULTS:
        raise RuntimeError(f"stage {name!r} has no result record in emkit.stage_results.RESULTS")
    return Stage(name, **spec)


STAGES: list[Stage] = [_named(n, spec) for n, spec in zip(STAGE_NAMES, _specs(), strict=True)]
