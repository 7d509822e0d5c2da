"""Data: chat rows, question sets, the standard public formats, mixtures and text corpora."""

from emkit.data.builtin import list_builtin
from emkit.data.dataset import load_dataset
from emkit.data.formats import DataWarning, write_jsonl
from emkit.data.mix import mix, split
from emkit.data.questions import load_questions
from emkit.data.schema import ChatRow, Question

__all__ = [
    "ChatRow",
    "DataWarning",
    "Question",
    "list_builtin",
    "load_dataset",
    "load_questions",
    "mix",
    "split",
    "write_jsonl",
]
