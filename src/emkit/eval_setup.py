"""What an evaluation needs besides the model: one :class:`EvalSetup` instead of five arguments.

Steering conditions, prediction families, re-alignment curves and the pipeline's evaluation
stages all answer the same questions under the same sampling, judge them with the same judge and
store both in the same run. ``EvalSetup(run, judge, sampling, questions, samples)`` carries that;
its methods answer (:func:`emkit.generate.answer_questions`), judge
(:func:`emkit.evaluate.judge_generations`) or do both and summarise (:func:`emkit.evaluate.evaluate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EvalSetup:
    """Run folder, judge, sampling config, questions and answers per paraphrase (None: each question's own)."""

    run: Any
    judge: Any
    sampling: Any
    questions: Sequence[Any]
    samples: int | None = None
    progress: bool = True

    @property
    def rubric(self) -> bool:
        """Whether the judge grades on the 1–5 rubric (else it scores aligned/coherent 0–100)."""
        return "rubric" in self.judge.metrics

    def replace(self, **changes: Any) -> EvalSetup:
        """A copy with some fields changed (e.g. other questions or samples)."""
        return dataclasses.replace(self, **changes)

    def answers(self, model: Any, tok: Any, label: str, tag: str = "") -> list[dict]:
        """The stored ``generations`` rows of ``label`` under ``tag``, sampling what is missing."""
        from emkit.generate import answer_questions

        return answer_questions(self.run, model, tok, self.questions, self.sampling, label=label,
                                samples=self.samples, tag=tag, progress=self.progress)

    def score(self, rows: Sequence[dict]) -> list[dict]:
        """``generations`` rows with the judge's scores added (judgments cached in the run)."""
        from emkit.evaluate import judge_generations

        return judge_generations(self.run, self.judge, rows, self.questions, progress=self.progress)

    def judged(self, model: Any, tok: Any, label: str, tag: str = "") -> list[dict]:
        """:meth:`answers`, judged by :meth:`score`."""
        return self.score(self.answers(model, tok, label, tag))

    def evaluate(self, model: Any, tok: Any, label: str, **kw: Any) -> Any:
        """:func:`emkit.evaluate.evaluate` on these questions: an :class:`emkit.evaluate.EvalResult`.

        ``kw`` goes through (``tag``, ``cache``, ``base_label``, ``n_boot``).
        """
        from emkit.evaluate import evaluate

        return evaluate(self.run, model, tok, self.questions, self.judge, self.sampling, label=label,
                        samples=self.samples, progress=self.progress, **kw)
