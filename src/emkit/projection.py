"""Diffing on identical inputs, and the projection of fine-tunes on the positive control's latents.

Every model is teacher-forced on the *same* texts (:func:`shared_items`: the evaluation prompts plus
one fixed pool of answers), so a latent's change is the model's, not its sample's. Per text we keep
the sum of each latent's activation over the chosen tokens (:class:`TextSums`), which gives both the
usual :class:`emkit.diff.LatentStats` and a paired bootstrap over texts.

The projection of a model on a set of latents (the positive control's top latents) is the mean
activation shift versus a reference model (the base model, or a correct-data control), averaged over
the latents: ``sum_i s_model(i) / n_model − sum_i s_ref(i) / n_ref`` with ``s(i)`` a text's
latent-mean activation summed over its tokens; the 95% interval resamples texts (the same texts for
both models). Rows are stored in ``persona_projection`` (``results.sqlite``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emkit.diff import DiffConfig, LatentStats, sae_id
from emkit.errors import EmkitError
from emkit.results import register_table

register_table(
    "persona_projection",
    """CREATE TABLE IF NOT EXISTS persona_projection (
        sae_id TEXT NOT NULL,
        source TEXT NOT NULL,         -- the shared inputs (emkit.projection.shared_source)
        token_set TEXT NOT NULL,
        model TEXT NOT NULL,          -- the projected fine-tune
        reference TEXT NOT NULL,      -- what the shift is measured against (base or a control model)
        latents TEXT NOT NULL,        -- JSON list: the positive control's top latents
        shift REAL,                   -- mean activation shift, averaged over the latents
        lo REAL, hi REAL,             -- bootstrap 95% interval over texts
        n_texts INTEGER NOT NULL,
        created REAL NOT NULL DEFAULT (julianday('now')),
        PRIMARY KEY (sae_id, source, token_set, model, reference)
    )""",
)


@dataclass
class TextSums:
    """Per text, each latent's activation summed over the chosen tokens (``sums [n_texts, n_cols]``,
    ``counts [n_texts]`` tokens); ``latents`` names the columns (None: all latents, in order);
    ``fired [n_cols]`` counts tokens where each latent was active."""

    sums: torch.Tensor
    counts: torch.Tensor
    fired: torch.Tensor
    latents: list[int] | None = None

    def stats(self) -> LatentStats:
        """The aggregate per-latent statistics (needs all latents)."""
        if self.latents is not None:
            raise EmkitError("these text sums hold only some latents")
        n = int(self.counts.sum())
        if n == 0:
            return LatentStats.empty(self.sums.shape[1])
        return LatentStats(self.sums.double().sum(0) / n, self.fired.double() / n, n)

    def columns(self, latents: Sequence[int]) -> TextSums:
        """Only the given latents' columns."""
        have = list(range(self.sums.shape[1])) if self.latents is None else self.latents
        pos = [have.index(lat) for lat in latents]
        return TextSums(self.sums[:, pos].clone(), self.counts.clone(), self.fired[pos].clone(), list(latents))

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"sums": self.sums.contiguous(), "counts": self.counts, "fired": self.fired}, str(tmp),
                  metadata={"meta": json.dumps({**meta, "latents": self.latents}, sort_keys=True)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> TextSums | None:
        """The stored sums if ``path`` holds them for exactly ``meta`` (and the same latents), else None."""
        from safetensors import safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                got = json.loads((f.metadata() or {}).get("meta", "{}"))
                latents = got.pop("latents", None)
                if got != json.loads(json.dumps(meta, sort_keys=True)):
                    return None
                return cls(f.get_tensor("sums"), f.get_tensor("counts"), f.get_tensor("fired"), latents)
        except (OSError, ValueError, json.JSONDecodeError):
            return None


@torch.no_grad()
def text_sums(sae: Any, model: Any, tok: Any, layer: int, items: Sequence[Any], token_set: str,
              cfg: DiffConfig | None = None, progress: bool = False, label: str = "") -> TextSums:
    """Encode ``items`` (texts or chats) with ``sae`` at ``layer``; per-text latent sums over ``token_set``."""
    from tqdm.auto import tqdm

    from emkit.activations import collect

    cfg = cfg or DiffConfig()
    n_lat = sae.num_latents
    sums = torch.zeros(len(items), n_lat, dtype=torch.float32)
    counts = torch.zeros(len(items), dtype=torch.int64)
    fired = torch.zeros(n_lat, dtype=torch.float64)
    bar = tqdm(total=len(items), desc=f"latents [{label}]", unit="seq", disable=not progress)
    for s in range(0, len(items), cfg.chunk):
        seqs = collect(model, tok, layer, list(items[s : s + cfg.chunk]), max_length=cfg.max_length,
                       batch_size=cfg.batch_size)
        if len(seqs) != len(items[s : s + cfg.chunk]):
            raise EmkitError("an input gave no tokens", hint="drop empty texts from the shared inputs")
        rows = [q.select(token_set, max_norm_ratio=cfg.max_norm_ratio) for q in seqs]
        owner = torch.cat([torch.full((len(r),), s + i, dtype=torch.long) for i, r in enumerate(rows)])
        block = torch.cat(rows)
        if len(block):
            idx, vals = sae.encode(block.to(sae.W_dec.device))
            idx, vals = idx.cpu(), vals.float().cpu()
            sums.index_put_((owner[:, None].expand_as(idx).reshape(-1), idx.reshape(-1)), vals.reshape(-1),
                            accumulate=True)
            fired.index_add_(0, idx.reshape(-1), (vals.reshape(-1) > 0).double())
            counts.index_add_(0, owner, torch.ones_like(owner))
        bar.update(len(seqs))
    bar.close()
    return TextSums(sums, counts, fired)


def shared_items(prompts: Sequence[Any], pools: Sequence[Sequence[Any]]) -> list[Any]:
    """The shared inputs: the prompts, then each pool's chats in turn, duplicates (same text) dropped."""
    out, seen = [], set()
    for it in [*prompts, *(c for pool in pools for c in pool)]:
        key = json.dumps(it, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


def shared_source(items: Sequence[Any]) -> str:
    """A name for these exact inputs (stored statistics are reused only for the same texts)."""
    from emkit.config import config_hash

    return f"shared:{config_hash([json.dumps(it, sort_keys=True) for it in items])}"


def project(ref: TextSums, other: TextSums, latents: Sequence[int], *, n_boot: int = 1000, seed: int = 0
            ) -> dict[str, Any]:
    """Mean activation shift ``other − ref`` on ``latents`` (averaged over them), with a bootstrap 95%
    interval resampling texts (paired: the same texts for both models)."""
    if len(ref.counts) != len(other.counts):
        raise EmkitError(f"projection needs the same texts: {len(ref.counts)} vs {len(other.counts)}")
    a = ref.columns(latents).sums.double().mean(1)
    b = other.columns(latents).sums.double().mean(1)
    na, nb = ref.counts.double(), other.counts.double()
    if float(na.sum()) == 0 or float(nb.sum()) == 0:
        return {"shift": None, "lo": None, "hi": None, "n_texts": len(a)}
    shift = float(b.sum() / nb.sum() - a.sum() / na.sum())
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(a), (n_boot, len(a)), generator=g)
    boot = b[idx].sum(1) / nb[idx].sum(1).clamp_min(1) - a[idx].sum(1) / na[idx].sum(1).clamp_min(1)
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"shift": shift, "lo": lo, "hi": hi, "n_texts": len(a)}


def projection_rows(sums: dict[str, TextSums], base: str, latents: Sequence[int], *,
                    controls: dict[str, str] | None = None, reference: str | None = None, n_boot: int = 1000,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Each model's projection vs ``base``; where ``controls`` maps a model to its correct-data control,
    also vs that control; ``relative``: the shift as a share of ``reference``'s (the positive control)."""
    out = []
    ref_shift = None
    if reference in sums:
        ref_shift = project(sums[base], sums[reference], latents, n_boot=1, seed=seed)["shift"]
    for lab, ts in sums.items():
        if lab == base:
            continue
        row = {"model": lab, "vs_base": project(sums[base], ts, latents, n_boot=n_boot, seed=seed)}
        ctrl = (controls or {}).get(lab)
        if ctrl in sums and ctrl != lab:
            row["control"] = ctrl
            row["vs_control"] = project(sums[ctrl], ts, latents, n_boot=n_boot, seed=seed)
        s = row["vs_base"]["shift"]
        row["relative"] = None if s is None or not ref_shift else s / ref_shift
        out.append(row)
    return out


def store_projection(db: Any, rows: Sequence[dict[str, Any]], *, sae: Any, source: str, token_set: str,
                     base: str, latents: Sequence[int]) -> None:
    """Write :func:`projection_rows` to ``persona_projection`` (replacing rows of the same inputs)."""
    sid = sae_id(sae)
    flat = []
    for r in rows:
        for ref, key in ((base, "vs_base"), (r.get("control"), "vs_control")):
            if ref and key in r:
                p = r[key]
                flat.append({"sae_id": sid, "source": source, "token_set": token_set, "model": r["model"],
                             "reference": ref, "latents": json.dumps(list(latents)), "shift": p["shift"],
                             "lo": p["lo"], "hi": p["hi"], "n_texts": p["n_texts"]})
    with db.transaction() as c:
        c.execute("DELETE FROM persona_projection WHERE sae_id=? AND source=? AND token_set=?", (sid, source, token_set))
    db.insert("persona_projection", flat, replace=True)


def cached_text_sums(path: Path, meta: dict[str, Any], latents: Sequence[int] | None,
                     compute: Callable[[], TextSums]) -> TextSums:
    """Text sums restricted to ``latents`` from ``path`` when stored for ``meta``; else computed and stored."""
    got = TextSums.load(path, meta)
    if got is not None and latents is not None and got.latents == list(latents):
        return got
    ts = compute()
    cols = ts.columns(latents) if latents is not None else ts
    cols.save(path, meta)
    return cols
