"""Tokenised training examples, length-bucketed batch plans and padding.

Every example carries labels equal to its token ids on assistant tokens and -100 elsewhere, so the
loss never sees prompt tokens. The batch plan for each epoch is a pure function of (seed, epoch):
rows are shuffled, cut into pools of ``POOL`` batches, sorted by length inside each pool so a batch
holds rows of similar length (little padding), and the batches are shuffled again. A resumed run
rebuilds exactly the same plan, so it needs to store only its step number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emkit.data.schema import ChatRow
from emkit.errors import EmkitError
from emkit.models.chat import assistant_mask

log = logging.getLogger(__name__)

IGNORE = -100
POOL = 50


@dataclass
class Example:
    """One tokenised conversation: ``labels`` is -100 on every non-assistant token."""

    ids: list[int]
    labels: list[int]

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def rows_hash(rows: Sequence[ChatRow]) -> str:
    """A stable hash of the training conversations (used to refuse resuming on different data)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r.messages, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def check_rows(rows: Sequence[ChatRow]) -> None:
    """Refuse an empty dataset, one without any assistant turn, and any malformed row."""
    if len(rows) == 0:
        raise EmkitError("no training rows")
    if not any(any(m.get("role") == "assistant" for m in r.messages) for r in rows):
        raise EmkitError(
            "the dataset has no assistant turns, so there is nothing to train on",
            hint="training rows need messages with role 'assistant' (the answers to learn)",
        )
    for i, row in enumerate(rows):
        row.validate(where=f"row {i}")


def tokenize_rows(tokenizer, rows: Sequence[ChatRow], max_length: int) -> tuple[list[Example], int]:
    """Tokenise rows with the assistant mask; return (examples, rows dropped by truncation).

    A dataset with no assistant turn at all, or a row without one, is an error (never a silent
    drop). Rows whose assistant tokens all fall beyond ``max_length`` are dropped and counted.
    """
    check_rows(rows)
    out: list[Example] = []
    dropped = 0
    for row in rows:
        ids, mask = assistant_mask(tokenizer, row.messages, max_length)
        labels = [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]
        ex = Example(ids, labels)
        if ex.n_targets == 0:
            dropped += 1
            continue
        out.append(ex)
    if dropped:
        log.warning("%d of %d rows have no assistant token within max_length=%d and are skipped",
                    dropped, len(rows), max_length)
    if not out:
        raise EmkitError(f"every row's answer lies beyond max_length={max_length}", hint="raise max_length")
    return out, dropped


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket: bool) -> list[list[int]]:
    """The micro-batches (lists of example indices) of one epoch; deterministic in (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if not bucket:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pool = batch_size * POOL
    batches: list[list[int]] = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p : p + pool], key=lambda i: (lengths[i], i))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


def total_steps(n_examples: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None) -> int:
    """Optimizer steps of a run: ``max_steps`` if set, else ``epochs`` passes over the data."""
    if max_steps is not None:
        return max_steps
    per_epoch = math.ceil(n_examples / batch_size)
    return max(1, math.ceil(epochs * per_epoch / grad_accum))


class BatchPlan:
    """Micro-batch ``k`` of the whole run (epochs follow each other with fresh shuffles)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, bucket: bool):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket = bucket
        self.per_epoch = math.ceil(len(self.lengths) / batch_size)
        self._cache: dict[int, list[list[int]]] = {}

    def epoch_of(self, k: int) -> int:
        return k // self.per_epoch

    def micro_batch(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.per_epoch)
        if epoch not in self._cache:
            self._cache = {epoch: epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.bucket)}
        return self._cache[epoch][j]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding carries label -100 and attention 0."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.ids)
        ids[r, :n] = torch.tensor(e.ids)
        labels[r, :n] = torch.tensor(e.labels)
        attn[r, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}
