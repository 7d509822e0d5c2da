"""Activations of a handful of inputs in memory: one :class:`SeqActs` per text or chat."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from emkit.activations.forward import inlier_mask, run_to_layer
from emkit.activations.tokens import pad_batch, pad_token_id, tokenize_item
from emkit.errors import EmkitError
from emkit.models.layers import hidden_size


@dataclass
class SeqActs:
    """Activations of one input sequence: ``acts [T, d]``, its token ids and answer mask ``[T]`` (bool)."""

    ids: list[int]
    acts: torch.Tensor
    answer: torch.Tensor

    def select(self, tokens: str = "all", skip_first: bool = True, max_norm_ratio: float | None = None
               ) -> torch.Tensor:
        """Rows for a token set: ``all``, ``prompt`` (non-answer) or ``answer``; position 0 dropped if asked,
        and rows with a massive norm (over ``max_norm_ratio`` x this sequence's median) if given."""
        keep = torch.ones(len(self.ids), dtype=torch.bool)
        if tokens == "answer":
            keep = self.answer.clone()
        elif tokens == "prompt":
            keep = ~self.answer
        elif tokens != "all":
            raise EmkitError(f"unknown token set {tokens!r}", hint="use all, prompt or answer")
        if skip_first and len(keep):
            keep[0] = False
        if max_norm_ratio is not None and len(keep) > 1:
            rest = slice(1, None) if skip_first else slice(None)
            keep[rest] &= inlier_mask(self.acts[rest], max_norm_ratio)
        return self.acts[keep]


@torch.no_grad()
def collect(model: Any, tok: Any, layer: int, items: Sequence[Any], *, max_length: int = 512,
            batch_size: int = 8, progress: bool = False, desc: str = "activations") -> list[SeqActs]:
    """Layer-``layer`` activations of each input (texts or chats), in input order, on the CPU in fp32."""
    encoded = [tokenize_item(tok, it, max_length) for it in items]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out: list[SeqActs | None] = [None] * len(encoded)
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress, unit="seq")
    for s in range(0, len(order), batch_size):
        idx = [i for i in order[s : s + batch_size] if encoded[i][0]]
        for i in order[s : s + batch_size]:
            if not encoded[i][0]:
                out[i] = SeqActs([], torch.zeros(0, hidden_size(model)), torch.zeros(0, dtype=torch.bool))
        if idx:
            ids, attn = pad_batch([encoded[i][0] for i in idx], pad_token_id(tok))
            h = run_to_layer(model, layer, ids, attn).float().cpu()
            for r, i in enumerate(idx):
                n = len(encoded[i][0])
                out[i] = SeqActs(encoded[i][0], h[r, :n].clone(), torch.tensor(encoded[i][1], dtype=torch.bool))
        bar.update(len(order[s : s + batch_size]))
    bar.close()
    return [o for o in out if o is not None]
