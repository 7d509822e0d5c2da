"""What every stage shares: the recipe, the run folder, loaded models, the judge and question sets;
what a stage is (:class:`Stage`); and where its result summary is stored (``RUN/pipeline/<stage>.json``,
read back as its :mod:`emkit.stage_results` record by :meth:`Context.result`).

The base model is loaded once and kept; a fine-tune is loaded on demand (base + adapter, merged
for speed) and dropped when another is asked for, so memory holds at most two models.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emkit.errors import EmkitError
from emkit.pipeline.recipe import BASE, Recipe
from emkit.run import atomic_write_text
from emkit.stage_results import parse_result, result_dict

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """A pipeline step: what it reads (``deps``, recipe ``sections``), how to run it, how long it takes."""

    name: str
    title: str
    deps: tuple[str, ...]
    sections: Callable[[Recipe], Any]
    fn: Callable[[Any], Any]  # -> its emkit.stage_results record (or a JSON-able dict)
    estimate: Callable[[Recipe], float]
    soft: tuple[str, ...] = ()  # read when present; may be skipped by the recipe


def result_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "pipeline" / f"{stage}.json"


def read_result(run_dir: Path, stage: str) -> dict | None:
    """A stage's stored summary as stored (a dict), or None if it has not run."""
    p = result_path(run_dir, stage)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        raise EmkitError(f"{p} is corrupt ({e.msg} at line {e.lineno})",
                         hint=f"re-run from that stage: emkit run RECIPE --from {stage}") from None


def _plain(o: Any) -> Any:
    """JSON fallback: numpy/torch scalars as numbers, anything else as text."""
    return o.item() if hasattr(o, "item") and callable(o.item) else str(o)


def write_result(run_dir: Path, stage: str, data: Any) -> None:
    """Store a stage's summary (its record, or a dict) as ``RUN/pipeline/<stage>.json``."""
    atomic_write_text(result_path(run_dir, stage),
                      json.dumps(result_dict(data), indent=1, sort_keys=True, default=_plain))


class Context:
    """Shared state of one pipeline run."""

    def __init__(self, recipe: Recipe, run: Any, *, progress: bool = True):
        self.recipe = recipe
        self.run = run
        self.progress = progress
        self._base: tuple[Any, Any] | None = None
        self._other: tuple[str, Any, Any] | None = None
        self._judge: Any = None
        self._grader: Any = None
        self._questions: dict[str, list] = {}

    # ------------------------------------------------------------------ models
    def model_dir(self, label: str) -> Path:
        return self.run.path / "models" / label

    def load(self, label: str) -> tuple[Any, Any]:
        """``(model, tokenizer)`` of the base model or a fine-tune of this run (by label)."""
        from emkit.models import load_model

        r = self.recipe
        if label == BASE:
            if self._base is None:
                self._base = load_model(r.model, device=r.device, dtype=r.dtype)
            return self._base
        if self._other is not None and self._other[0] == label:
            return self._other[1], self._other[2]
        folder = self.model_dir(label)
        if not folder.is_dir():
            raise EmkitError(f"no fine-tuned model {label!r} at {folder}", hint="run the finetune stage first")
        self._other = None
        gc.collect()
        model, tok = load_model(folder, device=r.device, dtype=r.dtype, merge_adapter=True)
        self._other = (label, model, tok)
        return model, tok

    def release(self, base: bool = False) -> None:
        """Drop the loaded fine-tune (and the base model too with ``base``), freeing memory for training."""
        self._other = None
        if base:
            self._base = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def close(self) -> None:
        self._base = None
        self._other = None
        self.run.db.close()
        gc.collect()

    # ------------------------------------------------------------------ stale results
    def fingerprints(self) -> dict[str, str]:
        """What each model label stands for: the base model, or the base plus training settings."""
        from emkit.config import config_hash

        r = self.recipe
        fp = {BASE: config_hash({"model": r.model, "dtype": r.dtype})}
        for m in r.models():
            fp[m.label] = config_hash({"model": r.model, "dtype": r.dtype, "train": r.train, "seed": r.seed,
                                       "rows": r.data.rows, "domain": m.domain, "fraction": m.fraction})
        for m in r.control_models():
            fp[m.label] = config_hash({"model": r.model, "dtype": r.dtype, "train": r.train, "seed": r.seed,
                                       "positive_control": r.positive_control, "arm": m.arm})
        return fp

    def purge_changed_models(self) -> list[str]:
        """Forget stored answers and statistics of labels whose model changed since the last run.

        Answers, latent statistics and steering results are keyed by model label; if the recipe now
        means a different model by a label (new base model, new training settings), the old rows
        would otherwise be reused. Judgments are keyed by text and stay valid.
        """
        old = self.run.manifest.get("model_fingerprints", {})
        new = self.fingerprints()
        changed = [lab for lab, h in new.items() if lab in old and old[lab] != h]
        if changed:
            log.warning("models changed since the last run, forgetting their stored results: %s", changed)
            import shutil

            from emkit.results import delete_model_rows

            delete_model_rows(self.run.db, changed)
            for lab in changed:
                shutil.rmtree(self.model_dir(f"{lab}-realigned"), ignore_errors=True)
        self.run.manifest["model_fingerprints"] = new
        self.run.save_manifest()
        return changed

    # ------------------------------------------------------------------ evaluation helpers
    @property
    def judge(self) -> Any:
        if self._judge is None:
            from emkit.judge import make_judge

            self._judge = make_judge(self.recipe.eval.judge)
        return self._judge

    @property
    def grader(self) -> Any:
        if self._grader is None:
            from emkit.judge.grader import make_grader

            self._grader = make_grader(self.recipe.eval.grader)
        return self._grader

    def questions(self, spec: str, n: int | None = None) -> list:
        """A question set (file or built-in name), first ``n`` questions."""
        if spec not in self._questions:
            from emkit.data import load_questions

            self._questions[spec] = load_questions(spec)
        qs = self._questions[spec]
        return qs[:n] if n is not None else qs

    def eval_questions(self) -> list:
        return self.questions(self.recipe.eval.questions, self.recipe.eval.n_questions)

    # ------------------------------------------------------------------ stage results
    def result(self, stage: str, required: bool = True) -> Any:
        """The stage's stored summary as its :mod:`emkit.stage_results` record (None if it has not run
        and is not ``required``)."""
        res = read_result(self.run.path, stage)
        if res is None and required:
            raise EmkitError(f"stage {stage!r} has no result in {self.run.path}",
                             hint=f"run it first: emkit run RECIPE --from {stage}")
        return None if res is None else parse_result(stage, res)

    def write(self, stage: str, data: Any) -> None:
        write_result(self.run.path, stage, data)
