"""Token sources: texts and chats as token ids with an answer mask, cut into windows and padded batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from emkit.errors import EmkitError
from emkit.models.chat import assistant_mask, render_prompt


def _messages(item: Any) -> list[dict[str, str]] | None:
    if hasattr(item, "messages"):
        return list(item.messages)
    if isinstance(item, dict) and "messages" in item:
        return list(item["messages"])
    if isinstance(item, list) and all(isinstance(m, dict) and "role" in m for m in item):
        return item
    return None


def tokenize_item(tok: Any, item: Any, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """``(ids, answer_mask)`` of one input: a text (mask all 0), or a chat (mask 1 on assistant tokens).

    A chat whose last turn is not the assistant's is rendered with the generation prompt, so its
    tokens are exactly what the model sees before answering.
    """
    msgs = _messages(item)
    if msgs is not None:
        if not msgs:
            raise EmkitError("a chat with no messages")
        if msgs[-1]["role"] == "assistant":
            ids, mask = assistant_mask(tok, msgs, max_length)
        else:
            ids = tok(render_prompt(tok, msgs), add_special_tokens=False)["input_ids"]
            ids = ids[:max_length] if max_length else ids
            mask = [0] * len(ids)
        return list(ids), list(mask)
    if isinstance(item, dict) and "text" in item:
        item = item["text"]
    if not isinstance(item, str):
        raise EmkitError(f"cannot take activations of a {type(item).__name__}",
                         hint="give texts, chat message lists, ChatRows or {'text': ...} rows")
    ids = tok(item)["input_ids"]
    ids = ids[:max_length] if max_length else ids
    return list(ids), [0] * len(ids)


def token_windows(tok: Any, items: Iterable[Any], ctx_len: int, min_len: int) -> Iterator[tuple[int, list[int], list[int]]]:
    """``(item_number, ids, mask)`` windows of at most ``ctx_len`` tokens; long documents are split.
    A chat gives one window (cut at ``ctx_len``) whose mask is 1 on assistant tokens and 2 elsewhere."""
    for n, item in enumerate(items):
        if _messages(item) is not None:
            ids, mask = tokenize_item(tok, item, ctx_len)
            if len(ids) >= min_len:
                yield n, ids, [1 if m else 2 for m in mask]
            continue
        ids, mask = tokenize_item(tok, item)
        for s in range(0, len(ids), ctx_len):
            if len(ids[s:s + ctx_len]) >= min_len:
                yield n, ids[s:s + ctx_len], mask[s:s + ctx_len]


def pad_batch(batch: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for r, row in enumerate(batch):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attn[r, : len(row)] = 1
    return ids, attn


def pad_token_id(tok: Any) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
