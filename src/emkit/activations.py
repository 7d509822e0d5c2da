"""Residual-stream activations after decoder layer L (``blocks.{L}.hook_resid_post``).

Two ways in:

* :func:`capture` streams a token source (corpus documents or chat transcripts) through the model
  up to layer L only and writes sharded safetensors plus ``index.json`` (model id, layer, dtype,
  token count, source). Memory stays flat; an interrupted capture resumes where the last shard
  ended. :class:`ActivationStore` reads the shards back.
* :func:`collect` returns activations for a handful of texts/chats in memory, one
  :class:`SeqActs` per input, with a mask of the answer (assistant) tokens.

The forward pass stops at layer L: a hook on block L records its output and raises a private
exception that is caught here, so layers above L are never run (works for any architecture whose
blocks :func:`emkit.models.layers.decoder_layers` finds).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from emkit.errors import EmkitError
from emkit.models.chat import assistant_mask, render_prompt
from emkit.models.layers import block_output, decoder_layers, hidden_size, hook_name
from emkit.run import atomic_write_text

FORMAT = "emkit.activations/1"
INDEX = "index.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# Rows whose norm exceeds this multiple of the median are "massive activations" (attention sinks,
# e.g. ~25,000 against a median of ~170 in SmolLM2's layer 15, on the first token of a window and on
# some early digits/delimiters). A handful of them would hold most of the variance, so they are
# left out of SAE training and of latent statistics.
MAX_NORM_RATIO = 10.0


def inlier_mask(acts: torch.Tensor, ratio: float | None = MAX_NORM_RATIO) -> torch.Tensor:
    """Bool mask of rows whose norm is at most ``ratio`` times the median row norm (all True if None)."""
    if ratio is None or len(acts) == 0:
        return torch.ones(acts.shape[:-1], dtype=torch.bool, device=acts.device)
    norms = acts.float().norm(dim=-1)
    return norms <= ratio * norms.median()


class _StopForward(Exception):
    """Raised by the layer-L hook to end the forward pass early."""


# ---------------------------------------------------------------- forward up to layer L


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def run_to_layer(model: Any, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Residual stream after decoder block ``layer`` for a batch, ``[batch, seq, d]``; later blocks never run."""
    blocks = decoder_layers(model)
    if not 0 <= layer < len(blocks):
        raise EmkitError(f"layer {layer} is out of range", hint=f"the model has layers 0..{len(blocks) - 1}")
    got: dict[str, torch.Tensor] = {}

    def hook(_mod: Any, _inp: Any, out: Any) -> None:
        got["h"] = block_output(out)
        raise _StopForward

    handle = blocks[layer].register_forward_hook(hook)
    dev = _device(model)
    try:
        model(input_ids=input_ids.to(dev),
              attention_mask=None if attention_mask is None else attention_mask.to(dev), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "h" not in got:
        raise EmkitError(f"decoder block {layer} was not called during the forward pass")
    return got["h"]


# ---------------------------------------------------------------- token sources


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


def _chunks(tok: Any, items: Iterable[Any], ctx_len: int, min_len: int) -> Iterator[tuple[int, list[int], list[int]]]:
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


def _pad(batch: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for r, row in enumerate(batch):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attn[r, : len(row)] = 1
    return ids, attn


def _pad_id(tok: Any) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


# ---------------------------------------------------------------- in memory


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
            ids, attn = _pad([encoded[i][0] for i in idx], _pad_id(tok))
            h = run_to_layer(model, layer, ids, attn).float().cpu()
            for r, i in enumerate(idx):
                n = len(encoded[i][0])
                out[i] = SeqActs(encoded[i][0], h[r, :n].clone(), torch.tensor(encoded[i][1], dtype=torch.bool))
        bar.update(len(order[s : s + batch_size]))
    bar.close()
    return [o for o in out if o is not None]


# ---------------------------------------------------------------- on disk


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def read_index(folder: str | Path) -> dict[str, Any]:
    p = Path(folder) / INDEX
    if not p.is_file():
        raise EmkitError(f"no activation index at {p}", hint="capture activations first (emkit sae train does it)")
    try:
        idx = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EmkitError(f"{p} is corrupt: {e}") from None
    if idx.get("format") != FORMAT:
        raise EmkitError(f"{p} is not an emkit activation index")
    return idx


def capture(model: Any, tok: Any, layer: int, items: Iterable[Any], out_dir: str | Path, *,
            max_tokens: int | None = None, ctx_len: int = 256, batch_size: int = 8,
            shard_tokens: int = 65536, dtype: str = "float32", source: str = "", skip_first: bool = True,
            max_norm_ratio: float | None = MAX_NORM_RATIO, min_len: int = 4, progress: bool = True) -> dict[str, Any]:
    """Stream ``items`` (texts or chats) through the model to layer ``layer``, writing shards to ``out_dir``.

    Each shard holds ``acts [n, d]`` plus, per row, ``tokens``, ``seq`` (window number), ``item``
    (input number; a long document gives several windows), ``pos`` (position in the window) and
    ``answer`` (1 on assistant tokens), ``chat`` (1 on every token of a chat); and per window,
    ``win_id``, ``win_len`` and all its tokens concatenated in ``win_tokens`` (for reading contexts back, including tokens whose rows were
    not stored). Position 0 of every window is left out when ``skip_first`` (its residual is an
    attention sink with an outsized norm), and so are other rows with a massive norm (over
    ``max_norm_ratio`` x the batch's median; counted in the index as ``n_dropped``). Returns the index.
    Re-running with the same settings resumes after the last complete shard (the input iterable
    must yield the same items in the same order); a finished capture returns at once, or is
    extended when it stopped at a smaller ``max_tokens``.
    """
    if dtype not in DTYPES:
        raise EmkitError(f"unknown activation dtype {dtype!r}", hint=f"use one of {sorted(DTYPES)}")
    if ctx_len < 2 or batch_size < 1 or shard_tokens < 1:
        raise EmkitError("ctx_len must be >= 2, batch_size and shard_tokens >= 1")
    from emkit.models.load import model_id

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"format": FORMAT, "model": model_id(model), "layer": layer, "hook": hook_name(layer),
                "d_in": hidden_size(model), "dtype": dtype, "ctx_len": ctx_len, "skip_first": skip_first,
                "max_norm_ratio": max_norm_ratio, "source": source}
    index: dict[str, Any]
    if (out / INDEX).is_file():
        index = read_index(out)
        changed = [k for k, v in settings.items() if index.get(k) != v]
        if changed:
            raise EmkitError(f"{out} holds a capture with other settings ({', '.join(changed)})",
                             hint="use another folder or delete this one")
        more = max_tokens is not None and max_tokens > index["n_tokens"] and index.get("stopped") == "max_tokens"
        if index["complete"] and not more:
            return index
        index["complete"] = False  # resume, or extend a capture that stopped at a smaller budget
    else:
        index = {**settings, "n_tokens": 0, "n_windows": 0, "n_dropped": 0, "complete": False, "shards": []}
    target = max_tokens if max_tokens is not None else float("inf")
    skip = index["n_windows"]
    bar = tqdm(total=None if max_tokens is None else max_tokens, initial=index["n_tokens"],
               desc=f"capture {hook_name(layer)}", unit="tok", disable=not progress)
    buf: dict[str, list[torch.Tensor]] = {k: [] for k in ("acts", "tokens", "seq", "item", "pos", "answer", "chat",
                                                          "win_id", "win_len", "win_tokens")}
    state = {"buf_tokens": 0, "windows": skip, "pending_tokens": 0}
    pending: list[tuple[int, int, list[int], list[int]]] = []

    def flush() -> None:
        if state["buf_tokens"] == 0:
            return
        name = _shard_name(len(index["shards"]))
        tensors = {k: torch.cat(v) for k, v in buf.items()}
        tmp = out / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"layer": str(layer)})
        os.replace(tmp, out / name)
        index["shards"].append({"file": name, "n_tokens": state["buf_tokens"]})
        index["n_tokens"] += state["buf_tokens"]
        index["n_windows"] = state["windows"]
        atomic_write_text(out / INDEX, json.dumps(index, indent=1))
        for v in buf.values():
            v.clear()
        state["buf_tokens"] = 0

    def run_batch() -> None:
        ids, attn = _pad([p[2] for p in pending], _pad_id(tok))
        h = run_to_layer(model, layer, ids, attn).to("cpu", DTYPES[dtype])
        s = 1 if skip_first else 0
        valid = attn.bool().clone()
        valid[:, :s] = False
        norms = h.float().norm(dim=-1)
        keep_all = valid if max_norm_ratio is None else valid & (norms <= max_norm_ratio * norms[valid].median())
        index["n_dropped"] += int((valid & ~keep_all).sum())
        buf["win_id"].append(torch.tensor([p[0] for p in pending], dtype=torch.int64))
        buf["win_len"].append(torch.tensor([len(p[2]) for p in pending], dtype=torch.int32))
        buf["win_tokens"].append(torch.tensor([t for p in pending for t in p[2]], dtype=torch.int32))
        for r, (w, n, row, mask) in enumerate(pending):
            t = len(row)
            keep = keep_all[r, s:t]
            m = int(keep.sum())
            buf["acts"].append(h[r, s:t][keep].clone())
            buf["tokens"].append(torch.tensor(row[s:], dtype=torch.int32)[keep])
            buf["seq"].append(torch.full((m,), w, dtype=torch.int64))
            buf["item"].append(torch.full((m,), n, dtype=torch.int64))
            buf["pos"].append(torch.arange(s, t, dtype=torch.int32)[keep])
            buf["answer"].append(torch.tensor([int(m == 1) for m in mask[s:]], dtype=torch.uint8)[keep])
            buf["chat"].append(torch.tensor([int(m > 0) for m in mask[s:]], dtype=torch.uint8)[keep])
            state["buf_tokens"] += m
            bar.update(m)
        state["windows"] += len(pending)
        state["pending_tokens"] = 0
        pending.clear()
        if state["buf_tokens"] >= shard_tokens:
            flush()

    exhausted = True
    s0 = 1 if skip_first else 0
    for w, (n, ids, mask) in enumerate(_chunks(tok, items, ctx_len, max(min_len, s0 + 1))):
        if w < skip:
            continue  # windows stored before an interruption
        if index["n_tokens"] + state["buf_tokens"] + state["pending_tokens"] >= target:
            exhausted = False
            break
        pending.append((w, n, ids, mask))
        state["pending_tokens"] += len(ids) - s0
        if len(pending) >= batch_size:
            run_batch()
    if pending:
        run_batch()
    flush()
    bar.close()
    index["complete"] = True
    index["stopped"] = "end of source" if exhausted else "max_tokens"
    atomic_write_text(out / INDEX, json.dumps(index, indent=1))
    return index


class ActivationStore:
    """Read access to a capture folder: shards, token counts, held-out split, shuffled batches."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.shards: list[dict[str, Any]] = self.index["shards"]
        if not self.shards:
            raise EmkitError(f"{self.folder} holds no activations", hint="the source gave no tokens")
        self.d_in: int = self.index["d_in"]
        self.n_tokens: int = self.index["n_tokens"]

    def load(self, i: int, keys: Sequence[str] = ("acts",)) -> dict[str, torch.Tensor]:
        path = self.folder / self.shards[i]["file"]
        if not path.is_file():
            raise EmkitError(f"activation shard {path} is missing")
        with safe_open(str(path), framework="pt") as f:  # reads only the tensors asked for
            return {k: f.get_tensor(k).float() if k == "acts" else f.get_tensor(k) for k in keys}

    @property
    def has_tokens(self) -> bool:
        """Whether the shards keep token ids, input numbers and positions (captures do; tensors don't)."""
        with safe_open(str(self.folder / self.shards[0]["file"]), framework="pt") as f:
            return {"tokens", "seq", "pos", "win_id", "win_len", "win_tokens"} <= set(f.keys())

    def acts(self, i: int) -> torch.Tensor:
        return self.load(i)["acts"]

    def gather_key(self, ranges: Sequence[tuple[int, int, int]], key: str) -> torch.Tensor | None:
        """Per-row ``key`` (e.g. ``chat``) over ``ranges``, or None when the shards do not store it."""
        with safe_open(str(self.folder / self.shards[0]["file"]), framework="pt") as f:
            if key not in set(f.keys()):
                return None
        return torch.cat([self.load(i, (key,))[key][s:e] for i, s, e in ranges]) if ranges else None

    def split(self, holdout_tokens: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """``(train, heldout)`` lists of ``(shard, start, end)`` ranges; held-out = the last tokens captured."""
        if holdout_tokens >= self.n_tokens:
            raise EmkitError(f"held-out tokens ({holdout_tokens}) must be fewer than captured ({self.n_tokens})")
        train, held = [], []
        left = holdout_tokens
        for i in reversed(range(len(self.shards))):
            n = self.shards[i]["n_tokens"]
            take = min(left, n)
            left -= take
            if take:
                held.append((i, n - take, n))
            if n - take:
                train.append((i, 0, n - take))
        return train[::-1], held[::-1]

    def gather(self, ranges: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        return torch.cat([self.acts(i)[s:e] for i, s, e in ranges]) if ranges else torch.zeros(0, self.d_in)

    def batches(self, ranges: Sequence[tuple[int, int, int]], batch_size: int, *, seed: int = 0, epoch: int = 0,
                buffer_shards: int = 4, skip_batches: int = 0) -> Iterator[torch.Tensor]:
        """Shuffled batches over ``ranges``: shard order shuffled, then rows shuffled within groups of
        ``buffer_shards`` shards. Deterministic in (seed, epoch); ``skip_batches`` resumes mid-epoch
        without loading the groups it skips. A last partial batch is dropped."""
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = [ranges[j] for j in torch.randperm(len(ranges), generator=g).tolist()]
        groups = [order[s : s + buffer_shards] for s in range(0, len(order), max(1, buffer_shards))]
        perms_seed = [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for _ in groups]
        skip = skip_batches * batch_size
        pos = 0
        carry = torch.zeros(0, self.d_in)
        for grp, ps in zip(groups, perms_seed, strict=True):
            n = sum(e - s for _, s, e in grp)
            if pos + n <= skip:
                pos += n
                continue
            x = self.gather(grp)
            x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(ps))]
            if pos < skip:
                x = x[skip - pos :]
            pos += n
            x = torch.cat([carry, x]) if len(carry) else x
            full = len(x) // batch_size * batch_size
            for s in range(0, full, batch_size):
                yield x[s : s + batch_size]
            carry = x[full:]


def write_store(acts: torch.Tensor, out_dir: str | Path, *, shard_tokens: int = 65536, model: str = "",
                layer: int = -1, source: str = "tensor", dtype: str = "float32") -> ActivationStore:
    """Write an in-memory ``[n, d]`` tensor as a capture folder (for synthetic data, tests and benchmarks)."""
    if acts.ndim != 2 or len(acts) == 0:
        raise EmkitError(f"expected a non-empty [n, d] tensor, got shape {tuple(acts.shape)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, s in enumerate(range(0, len(acts), shard_tokens)):
        part = acts[s : s + shard_tokens].to(DTYPES[dtype]).contiguous()
        save_file({"acts": part}, str(out / _shard_name(i)))
        shards.append({"file": _shard_name(i), "n_tokens": len(part)})
    index = {"format": FORMAT, "model": model, "layer": layer, "hook": hook_name(layer) if layer >= 0 else "",
             "d_in": acts.shape[1], "dtype": dtype, "ctx_len": 0, "skip_first": False, "source": source,
             "n_tokens": len(acts), "n_windows": 0, "complete": True, "shards": shards}
    atomic_write_text(out / INDEX, json.dumps(index, indent=1))
    return ActivationStore(out)
