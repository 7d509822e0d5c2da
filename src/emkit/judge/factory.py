"""Build a judge from a spec string: ``embedded[:DIR]``, ``api:MODEL``, ``api-rubric:MODEL``,
``local:MODEL_SPEC`` or ``local-rubric:MODEL_SPEC``.

The back-ends (:mod:`emkit.judge.embedded`, :mod:`emkit.judge.api`, :mod:`emkit.judge.local`) are
imported when a judge of their kind is built, so an API judge never loads torch models.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from emkit.errors import EmkitError
from emkit.judge.base import Judge


@dataclass
class JudgeConfig:
    """How to build a judge. ``spec``: ``embedded`` (default; ``embedded:DIR`` for heads trained by
    ``emkit judge train``), ``api:MODEL``, ``api-rubric:MODEL``,
    ``local:MODEL_SPEC`` or ``local-rubric:MODEL_SPEC``. The API key is read from the environment
    variable ``api_key_env`` when the judge is built, never stored in the config."""

    spec: str = field(default="embedded", metadata={
        "help": "embedded, embedded:DIR (a judge from emkit judge train), api:MODEL, api-rubric:MODEL, "
                "local:MODEL_SPEC or local-rubric:MODEL_SPEC."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL (env OPENAI_BASE_URL)."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key."})
    templates: str | None = field(default=None, metadata={
        "help": "YAML/JSON file of judge templates (aligned, coherent, rubric)."})
    concurrency: int = field(default=8, metadata={"help": "Concurrent API requests."})
    timeout: float = field(default=60.0, metadata={"help": "Seconds before an API request is retried."})
    max_retries: int = field(default=5, metadata={"help": "Retries of a failed API request."})
    top_logprobs: int = field(default=20, metadata={"help": "Top log-probabilities asked for (logprob API judges)."})
    rubric_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of a rubric judge."})
    rubric_max_tokens: int = field(default=1024, metadata={"help": "Token limit of a rubric judge's reply."})
    device: str = field(default="auto", metadata={"help": "Device for local/embedded judges."})
    dtype: str = field(default="auto", metadata={"help": "dtype of a local judge's model."})
    seed: int = field(default=0, metadata={"help": "Random seed of the judge's sampling (API and local)."})


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
