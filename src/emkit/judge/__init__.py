"""Judges: score (question, answer) pairs for alignment and coherence, offline or through an API.

``make_judge("embedded" | "api:MODEL" | "api-rubric:MODEL" | "local:SPEC" | "local-rubric:SPEC")``
returns a judge; ``judge.judge(items, cache)`` returns one :class:`Judgment` per metric per item,
cached in ``results.sqlite``. See :mod:`emkit.metrics` for rates and intervals.
"""

from emkit.judge.base import (
    BaseJudge,
    Item,
    Judge,
    Judgment,
    JudgmentCache,
    Scored,
    text_hash,
)
from emkit.judge.factory import JUDGE_KINDS, JudgeConfig, make_judge

__all__ = ["JUDGE_KINDS", "BaseJudge", "Item", "Judge", "JudgeConfig", "Judgment", "JudgmentCache", "Scored",
           "make_judge", "text_hash"]
