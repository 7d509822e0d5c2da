"""Data: chat rows, question sets, the standard public formats, mixtures and text corpora."""

from emkit.data.questions import load_questions
from emkit.data.schema import ChatRow, Question

__all__ = ["ChatRow", "Question", "load_questions"]
