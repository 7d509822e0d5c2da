"""Capturing activations to disk: :func:`capture` streams a token source into sharded safetensors.

The pieces, one level each: :func:`_open_index` (a new capture, or the one to resume),
:class:`_WindowBatches` (batches of the windows still to do, within the token budget),
:func:`_kept_rows` and :func:`_columns` (which rows of a forward pass are stored, and their per-row
and per-window columns) and :class:`_ShardWriter` (buffers columns, writes shards and the index).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from emkit.activations.forward import MAX_NORM_RATIO, run_to_layer
from emkit.activations.store import DTYPES, FORMAT, INDEX, read_index, shard_name
from emkit.activations.tokens import pad_batch, pad_token_id, token_windows
from emkit.errors import EmkitError, StaleFolderError
from emkit.models.layers import hidden_size, hook_name
from emkit.run import atomic_write_text

COLUMNS = ("acts", "tokens", "seq", "item", "pos", "answer", "chat", "win_id", "win_len", "win_tokens")
Window = tuple[int, int, list[int], list[int]]  # (window number, item number, ids, mask)


def _open_index(out: Path, settings: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """The index to continue: a new one, or the stored one (``complete`` unless it should be resumed or extended)."""
    if not (out / INDEX).is_file():
        return {**settings, "n_tokens": 0, "n_windows": 0, "n_dropped": 0, "complete": False, "shards": []}
    index = read_index(out)
    changed = [k for k, v in settings.items() if index.get(k) != v]
    if changed:
        raise StaleFolderError(f"{out} holds a capture with other settings ({', '.join(changed)})",
                         hint="use another folder or delete this one")
    more = max_tokens is not None and max_tokens > index["n_tokens"] and index.get("stopped") == "max_tokens"
    if index["complete"] and not more:
        return index
    index["complete"] = False  # resume, or extend a capture that stopped at a smaller budget
    return index


class _WindowBatches:
    """Batches of the windows numbered ``skip`` and on (earlier ones are stored), until the budget is spent.

    ``exhausted`` tells afterwards whether the source ran out (else the budget stopped it).
    """

    def __init__(self, windows: Iterable[tuple[int, list[int], list[int]]], skip: int, batch_size: int,
                 first: int, target: float):
        self.windows, self.skip, self.batch_size, self.first, self.target = windows, skip, batch_size, first, target
        self.exhausted = True

    def batches(self, spent: Callable[[], int]) -> Iterator[list[Window]]:
        """``spent()``: tokens stored so far, read before each window (the consumer's count)."""
        pending: list[Window] = []
        pending_tokens = 0
        for w, (n, ids, mask) in enumerate(self.windows):
            if w < self.skip:
                continue  # windows stored before an interruption
            if spent() + pending_tokens >= self.target:
                self.exhausted = False
                break
            pending.append((w, n, ids, mask))
            pending_tokens += len(ids) - self.first
            if len(pending) >= self.batch_size:
                yield pending
                pending, pending_tokens = [], 0
        if pending:
            yield pending


def _kept_rows(h: torch.Tensor, attn: torch.Tensor, first: int, max_norm_ratio: float | None
               ) -> tuple[torch.Tensor, int]:
    """``[batch, seq]`` mask of the rows to store (real tokens from ``first`` on, without massive norms
    over ``max_norm_ratio`` x the batch's median) and how many rows the norm limit dropped."""
    valid = attn.bool().clone()
    valid[:, :first] = False
    norms = h.float().norm(dim=-1)
    keep = valid if max_norm_ratio is None else valid & (norms <= max_norm_ratio * norms[valid].median())
    return keep, int((valid & ~keep).sum())


def _columns(h: torch.Tensor, keep_all: torch.Tensor, batch: list[Window], first: int
             ) -> tuple[dict[str, list[torch.Tensor]], int]:
    """The shard columns of one batch (see :func:`capture`) and the number of rows kept."""
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in COLUMNS}
    cols["win_id"].append(torch.tensor([p[0] for p in batch], dtype=torch.int64))
    cols["win_len"].append(torch.tensor([len(p[2]) for p in batch], dtype=torch.int32))
    cols["win_tokens"].append(torch.tensor([t for p in batch for t in p[2]], dtype=torch.int32))
    total = 0
    for r, (w, n, row, mask) in enumerate(batch):
        t = len(row)
        keep = keep_all[r, first:t]
        m = int(keep.sum())
        cols["acts"].append(h[r, first:t][keep].clone())
        cols["tokens"].append(torch.tensor(row[first:], dtype=torch.int32)[keep])
        cols["seq"].append(torch.full((m,), w, dtype=torch.int64))
        cols["item"].append(torch.full((m,), n, dtype=torch.int64))
        cols["pos"].append(torch.arange(first, t, dtype=torch.int32)[keep])
        cols["answer"].append(torch.tensor([int(v == 1) for v in mask[first:]], dtype=torch.uint8)[keep])
        cols["chat"].append(torch.tensor([int(v > 0) for v in mask[first:]], dtype=torch.uint8)[keep])
        total += m
    return cols, total


class _ShardWriter:
    """Buffers columns; writes a shard (and the index after it) once ``shard_tokens`` rows are buffered."""

    def __init__(self, out: Path, index: dict[str, Any], layer: int, shard_tokens: int):
        self.out, self.index, self.layer, self.shard_tokens = out, index, layer, shard_tokens
        self.buf: dict[str, list[torch.Tensor]] = {k: [] for k in COLUMNS}
        self.buffered = 0
        self.windows = index["n_windows"]

    def add(self, cols: dict[str, list[torch.Tensor]], n_rows: int, n_windows: int) -> None:
        for k, v in cols.items():
            self.buf[k].extend(v)
        self.buffered += n_rows
        self.windows += n_windows
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if self.buffered == 0:
            return
        name = shard_name(len(self.index["shards"]))
        tmp = self.out / f".{name}.tmp"
        save_file({k: torch.cat(v) for k, v in self.buf.items()}, str(tmp), metadata={"layer": str(self.layer)})
        os.replace(tmp, self.out / name)
        self.index["shards"].append({"file": name, "n_tokens": self.buffered})
        self.index["n_tokens"] += self.buffered
        self.index["n_windows"] = self.windows
        atomic_write_text(self.out / INDEX, json.dumps(self.index, indent=1))
        for v in self.buf.values():
            v.clear()
        self.buffered = 0


def capture(model: Any, tok: Any, layer: int, items: Iterable[Any], out_dir: str | Path, *,
            max_tokens: int | None = None, ctx_len: int = 256, batch_size: int = 8,
            shard_tokens: int = 65536, dtype: str = "float32", source: str = "", skip_first: bool = True,
            max_norm_ratio: float | None = MAX_NORM_RATIO, min_len: int = 4, progress: bool = True) -> dict[str, Any]:
    """Stream ``items`` (texts or chats) through the model to layer ``layer``, writing shards to ``out_dir``.

    Each shard holds ``acts [n, d]`` plus, per row, ``tokens``, ``seq`` (window number), ``item``
    (input number; a long document gives several windows), ``pos`` (position in the window) and
    ``answer`` (1 on assistant tokens), ``chat`` (1 on every token of a chat); and per window,
    ``win_id``, ``win_len`` and all its tokens concatenated in ``win_tokens`` (for reading contexts
    back, including tokens whose rows were not stored). Position 0 of every window is left out when
    ``skip_first`` (its residual is an attention sink with an outsized norm), and so are other rows
    with a massive norm (over ``max_norm_ratio`` x the batch's median; counted in the index as
    ``n_dropped``). Returns the index. Re-running with the same settings resumes after the last
    complete shard (the input iterable must yield the same items in the same order); a finished
    capture returns at once, or is extended when it stopped at a smaller ``max_tokens``.
    """
    if dtype not in DTYPES:
        raise EmkitError(f"unknown activation dtype {dtype!r}", hint=f"use one of {sorted(DTYPES)}")
    if ctx_len < 2 or batch_size < 1 or shard_tokens < 1:
        raise EmkitError("ctx_len must be >= 2, batch_size and shard_tokens >= 1")
    from emkit.models.load import model_id

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = _open_index(out, {"format": FORMAT, "model": model_id(model), "layer": layer, "hook": hook_name(layer),
                              "d_in": hidden_size(model), "dtype": dtype, "ctx_len": ctx_len,
                              "skip_first": skip_first, "max_norm_ratio": max_norm_ratio, "source": source},
                        max_tokens)
    if index["complete"]:
        return index
    first = 1 if skip_first else 0
    writer = _ShardWriter(out, index, layer, shard_tokens)
    source_batches = _WindowBatches(token_windows(tok, items, ctx_len, max(min_len, first + 1)), index["n_windows"],
                                    batch_size, first, max_tokens if max_tokens is not None else float("inf"))
    bar = tqdm(total=max_tokens, initial=index["n_tokens"], desc=f"capture {hook_name(layer)}", unit="tok",
               disable=not progress)
    for batch in source_batches.batches(lambda: index["n_tokens"] + writer.buffered):
        ids, attn = pad_batch([p[2] for p in batch], pad_token_id(tok))
        h = run_to_layer(model, layer, ids, attn).to("cpu", DTYPES[dtype])
        keep, dropped = _kept_rows(h, attn, first, max_norm_ratio)
        index["n_dropped"] += dropped
        cols, kept = _columns(h, keep, batch, first)
        bar.update(kept)
        writer.add(cols, kept, len(batch))
    writer.flush()
    bar.close()
    index["complete"] = True
    index["stopped"] = "end of source" if source_batches.exhausted else "max_tokens"
    atomic_write_text(out / INDEX, json.dumps(index, indent=1))
    return index
