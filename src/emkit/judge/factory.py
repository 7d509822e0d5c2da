"""Build a judge from a spec string: ``embedded[:DIR]``, ``api:MODEL``, ``api-rubric:MODEL``,
``local:MODEL_SPEC`` or ``local-rubric:MODEL_SPEC``.

The back-ends (:mod:`emkit.judge.embedded`, :mod:`emkit.judge.api`, :mod:`emkit.judge.local`) are
imported when a judge of their kind is built, so an API judge never loads torch models.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from emkit.errors import EmkitError
from emkit.judge.base import Judge


@dataclass
class JudgeConfig:
    """How to build a judge. ``spec``: ``embedded`` (default; ``embedded:DIR`` for heads trained by
    ``emkit judge train``), ``api:MODEL``, ``api-rubric:MODEL``,
    ``local:MODEL_SPEC`` or ``local-rubric:MODEL_SPEC``. The API key is read from the environment
    variable ``api_key_env`` when the judge is built, never stored in the config."""

    spec: str = "embedded"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    templates: str | None = None
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 5
    top_logprobs: int = 20
    rubric_temperature: float = 1.0
    rubric_max_tokens: int = 1024
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0


JUDGE_KINDS = ("embedded", "api", "api-rubric", "local", "local-rubric")


def make_judge(spec: str | JudgeConfig | None = None, **overrides: Any) -> Judge:
    """Build a judge from a spec string or a :class:`JudgeConfig` (None: the embedded judge)."""
    cfg = spec if isinstance(spec, JudgeConfig) else JudgeConfig(spec=spec or "embedded")
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    kind, _, target = cfg.spec.strip().partition(":")
    kind = kind.lower()
    if kind not in JUDGE_KINDS:
        raise EmkitError(f"unknown judge {cfg.spec!r}", hint="use embedded, embedded:DIR, api:MODEL, "
                         "api-rubric:MODEL, local:MODEL or local-rubric:MODEL")
    if kind != "embedded" and not target.strip():
        raise EmkitError(f"judge {cfg.spec!r} names no model", hint=f"e.g. {kind}:gpt-4o-mini")
    templates = None
    if cfg.templates:
        from emkit.judge.prompts import load_templates

        templates = load_templates(cfg.templates)
    mode = "rubric" if kind.endswith("-rubric") else "logprob"
    if kind == "embedded":
        from emkit.judge.embedded import EmbeddedJudge

        if templates:
            warnings.warn("the embedded judge is a trained head: judge templates do not apply to it", stacklevel=2)
        return EmbeddedJudge(target.strip() or None, device="cpu" if cfg.device == "auto" else cfg.device)
    if kind.startswith("api"):
        from emkit.judge.api import ApiJudge

        return ApiJudge(target.strip(), mode=mode, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                        templates=templates, concurrency=cfg.concurrency, timeout=cfg.timeout,
                        max_retries=cfg.max_retries, top_logprobs=cfg.top_logprobs,
                        rubric_temperature=cfg.rubric_temperature, rubric_max_tokens=cfg.rubric_max_tokens,
                        seed=cfg.seed)
    from emkit.judge.local import LocalJudge
    from emkit.models import load_model

    model, tok = load_model(target.strip(), device=cfg.device, dtype=cfg.dtype)
    return LocalJudge(model, tok, mode=mode, name=target.strip(), templates=templates,
                      rubric_temperature=cfg.rubric_temperature,
                      rubric_max_tokens=cfg.rubric_max_tokens, seed=cfg.seed)
