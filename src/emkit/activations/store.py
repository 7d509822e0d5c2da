"""A capture folder on disk: ``index.json`` plus safetensors shards, read by :class:`ActivationStore`."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from emkit.errors import EmkitError
from emkit.models.layers import hook_name
from emkit.run import atomic_write_text

FORMAT = "emkit.activations/1"
INDEX = "index.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def shard_name(i: int) -> str:
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
        save_file({"acts": part}, str(out / shard_name(i)))
        shards.append({"file": shard_name(i), "n_tokens": len(part)})
    index = {"format": FORMAT, "model": model, "layer": layer, "hook": hook_name(layer) if layer >= 0 else "",
             "d_in": acts.shape[1], "dtype": dtype, "ctx_len": 0, "skip_first": False, "source": source,
             "n_tokens": len(acts), "n_windows": 0, "complete": True, "shards": shards}
    atomic_write_text(out / INDEX, json.dumps(index, indent=1))
    return ActivationStore(out)
