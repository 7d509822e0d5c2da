"""The two shapes everything flows through: chat rows (training) and questions (evaluation)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from emkit.errors import EmkitError

ROLES = ("system", "user", "assistant")


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the key for 'the same question'."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


@dataclass
class ChatRow:
    """One training conversation; extra keys of the source row are kept in ``metadata``."""

    messages: list[dict[str, str]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "row") -> ChatRow:
        if not isinstance(self.messages, list) or not self.messages:
            raise EmkitError(f"{where}: no messages")
        for i, m in enumerate(self.messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise EmkitError(f"{where}: message {i} needs 'role' and 'content'")
            if m["role"] not in ROLES:
                raise EmkitError(f"{where}: message {i} has unknown role {m['role']!r}", hint=f"use one of {ROLES}")
            if not isinstance(m["content"], str) or not m["content"].strip():
                raise EmkitError(f"{where}: message {i} ({m['role']}) is empty")
        if not any(m["role"] == "user" for m in self.messages):
            raise EmkitError(f"{where}: no user turn")
        if not any(m["role"] == "assistant" for m in self.messages):
            raise EmkitError(f"{where}: no assistant turn", hint="training rows need at least one assistant message")
        return self

    @property
    def user(self) -> str:
        return next(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def answer(self) -> str:
        return [m["content"] for m in self.messages if m["role"] == "assistant"][-1]

    @property
    def system(self) -> str | None:
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)

    @property
    def key(self) -> str:
        """What makes two rows 'the same question': the normalised text of all user turns."""
        return normalize_text(" ".join(m["content"] for m in self.messages if m["role"] == "user"))

    def to_record(self) -> dict[str, Any]:
        """The chat-JSONL form: ``{"messages", "metadata"}``, with a canary kept at the top level too."""
        rec: dict[str, Any] = {"messages": [dict(m) for m in self.messages]}
        meta = {k: v for k, v in self.metadata.items() if k != "canary"}
        if meta:
            rec["metadata"] = meta
        if "canary" in self.metadata:
            rec["canary"] = self.metadata["canary"]
        return rec


@dataclass
class Question:
    """An evaluation question (Betley et al.'s YAML shape): paraphrases, samples, judge prompts."""

    id: str
    paraphrases: list[str]
    samples_per_paraphrase: int = 1
    system: str | None = None
    category: str = ""
    type: str = "free_form_judge_0_100"
    judge_prompts: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.paraphrases[0]
