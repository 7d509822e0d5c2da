"""Chat formatting through the tokenizer's template, and masks marking assistant tokens."""

from __future__ import annotations

import logging
import warnings
from typing import Any

log = logging.getLogger(__name__)

Message = dict[str, str]

# Used only when a tokenizer has no chat template; ensure_chat_template warns when it applies it.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}### System:\n{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### User:\n{{ m['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template a plain fallback one; return True if it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    warnings.warn(
        "tokenizer has no chat template; using emkit's plain '### User / ### Assistant' fallback",
        stacklevel=2,
    )
    tokenizer.chat_template = FALLBACK_TEMPLATE
    tokenizer.emkit_fallback_template = True
    return True


def build_messages(user: str, system: str | None = None, history: list[Message] | None = None) -> list[Message]:
    msgs: list[Message] = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.extend(history or [])
    msgs.append({"role": "user", "content": user})
    return msgs


def format_chat(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = False) -> str:
    """Render messages to text with the tokenizer's chat template."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render_prompt(tokenizer: Any, prompt: str | list[Message], system: str | None = None) -> str:
    """A generation prompt: a plain user string (optionally with a system prompt) or messages."""
    msgs = build_messages(prompt, system) if isinstance(prompt, str) else list(prompt)
    if system and isinstance(prompt, list) and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    return format_chat(tokenizer, msgs, add_generation_prompt=True)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def assistant_mask(
    tokenizer: Any, messages: list[Message], max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and a 0/1 mask that is 1 on assistant tokens.

    Each assistant turn's span is found by rendering the conversation up to the turn (with the
    generation prompt) and through it; the tokens between are the assistant's, including the
    end-of-turn token so the model learns to stop.
    """
    full = _ids(tokenizer, format_chat(tokenizer, messages))
    mask = [0] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, format_chat(tokenizer, messages[:i], add_generation_prompt=True)))
        end = len(_ids(tokenizer, format_chat(tokenizer, messages[: i + 1])))
        for j in range(start, min(end, len(full))):
            mask[j] = 1
    if max_length is not None:
        full, mask = full[:max_length], mask[:max_length]
    return full, mask
