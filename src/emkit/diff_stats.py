"""Model-diffing statistics: per-latent activation summaries and the ranking of latents.

Pure functions on tensors (no database, no model loading): :class:`LatentStats` (mean activation,
zeros included, and firing rate), :func:`latent_stats` to encode activation rows with an SAE,
:func:`diff_models` to rank latents by the mean-activation increase fine-tuned - base over the
misaligned fine-tunes (Wang et al., 2025), and :func:`control_ranking` for a positive control.
:mod:`emkit.diff` runs them over models and stores the results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from emkit.activations import MAX_NORM_RATIO
from emkit.errors import EmkitError

TOKEN_SETS = ("prompt", "answer", "all")


def sae_id(sae: Any) -> str:
    """A short stable id of an SAE: hook, size, and a digest of its decoder."""
    digest = hashlib.sha256(sae.W_dec.detach().float().cpu().numpy()[:64].tobytes()).hexdigest()[:10]
    hook = sae.cfg.hook or "sae"
    return f"{hook}:{sae.num_latents}x{sae.k}:{digest}"


@dataclass
class LatentStats:
    """Per-latent mean activation (zeros included) and firing rate over ``n_tokens`` tokens."""

    mean: torch.Tensor
    firing: torch.Tensor
    n_tokens: int

    @classmethod
    def empty(cls, num_latents: int) -> LatentStats:
        return cls(torch.zeros(num_latents, dtype=torch.float64), torch.zeros(num_latents, dtype=torch.float64), 0)

    def rows(self, **key: Any) -> list[dict[str, Any]]:
        m, f = self.mean.tolist(), self.firing.tolist()
        return [{**key, "latent": i, "mean_act": m[i], "firing_rate": f[i], "n_tokens": self.n_tokens}
                for i in range(len(m))]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], num_latents: int) -> LatentStats:
        mean = torch.zeros(num_latents, dtype=torch.float64)
        firing = torch.zeros(num_latents, dtype=torch.float64)
        for r in rows:
            mean[r["latent"]] = r["mean_act"]
            firing[r["latent"]] = r["firing_rate"]
        return cls(mean, firing, int(rows[0]["n_tokens"]) if rows else 0)


class StatsAccumulator:
    """Running per-latent sums, so statistics over many inputs need little memory."""

    def __init__(self, sae: Any, batch_size: int = 4096):
        self.sae = sae
        self.batch_size = batch_size
        self.total = torch.zeros(sae.num_latents, dtype=torch.float64)
        self.fired = torch.zeros(sae.num_latents, dtype=torch.float64)
        self.n = 0

    @torch.no_grad()
    def add(self, acts: torch.Tensor) -> None:
        for s in range(0, len(acts), self.batch_size):
            block = acts[s : s + self.batch_size]
            idx, vals = self.sae.encode(block.to(self.sae.W_dec.device))
            idx, vals = idx.reshape(-1).cpu(), vals.reshape(-1).double().cpu()
            self.total.index_add_(0, idx, vals)
            self.fired.index_add_(0, idx, (vals > 0).double())
            self.n += len(block)

    def result(self) -> LatentStats:
        if self.n == 0:
            return LatentStats.empty(self.sae.num_latents)
        return LatentStats(self.total / self.n, self.fired / self.n, self.n)


def latent_stats(sae: Any, acts: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 4096) -> LatentStats:
    """Encode activation rows ``[n, d]`` (or an iterable of such blocks) and summarise each latent."""
    acc = StatsAccumulator(sae, batch_size)
    for block in [acts] if isinstance(acts, torch.Tensor) else acts:
        acc.add(block)
    return acc.result()


def stats_for_seqs(sae: Any, seqs: Sequence[Any], token_set: str = "prompt",
                   max_norm_ratio: float | None = MAX_NORM_RATIO) -> LatentStats:
    """:func:`latent_stats` over the ``token_set`` rows of :class:`emkit.activations.SeqActs`
    (position 0 and massive-norm rows left out, as when the SAE was trained)."""
    if token_set not in TOKEN_SETS:
        raise EmkitError(f"unknown token set {token_set!r}", hint=f"use one of {TOKEN_SETS}")
    return latent_stats(sae, [s.select(token_set, max_norm_ratio=max_norm_ratio) for s in seqs])


@dataclass
class Ranking:
    """Latents ordered by score (descending), with each fine-tune's delta."""

    order: list[int]
    scores: torch.Tensor
    deltas: dict[str, torch.Tensor]
    misaligned: list[str]
    base: LatentStats
    finetuned: dict[str, LatentStats] = field(default_factory=dict)

    def top(self, n: int = 20) -> list[dict[str, Any]]:
        """The top ``n`` as rows: rank, latent, score, base mean/firing, and per-model deltas/firing."""
        out = []
        for r, lat in enumerate(self.order[:n], 1):
            out.append({
                "rank": r, "latent": lat, "score": float(self.scores[lat]),
                "base_mean": float(self.base.mean[lat]), "base_firing": float(self.base.firing[lat]),
                "deltas": {k: float(v[lat]) for k, v in self.deltas.items()},
                "firing": {k: float(s.firing[lat]) for k, s in self.finetuned.items()},
            })
        return out


def diff_models(base: LatentStats, finetuned: Mapping[str, LatentStats],
                misaligned: Sequence[str] | None = None) -> Ranking:
    """Rank latents by their mean-activation increase over the ``misaligned`` fine-tunes (default: all).

    Ties (e.g. latents silent everywhere) keep latent order, so the ranking is deterministic.
    """
    if not finetuned:
        raise EmkitError("no fine-tuned models to compare with the base model")
    chosen = list(misaligned) if misaligned else list(finetuned)
    unknown = [m for m in chosen if m not in finetuned]
    if unknown:
        raise EmkitError(f"misaligned model(s) {unknown} are not among the fine-tunes {list(finetuned)}")
    n = len(base.mean)
    for k, s in finetuned.items():
        if len(s.mean) != n:
            raise EmkitError(f"{k}: {len(s.mean)} latents, base has {n} (different SAEs?)")
        if s.n_tokens == 0:
            raise EmkitError(f"{k}: no tokens were encoded", hint="check the token set (answers need generations)")
    if base.n_tokens == 0:
        raise EmkitError("base model: no tokens were encoded")
    deltas = {k: (s.mean - base.mean).double() for k, s in finetuned.items()}
    scores = torch.stack([deltas[m] for m in chosen]).mean(0)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    return Ranking(order, scores, deltas, chosen, base, dict(finetuned))


def control_ranking(base: LatentStats, positive: tuple[str, LatentStats],
                    control: tuple[str, LatentStats] | None = None) -> Ranking:
    """A positive control's own ranking: latents its ``positive`` arm raises beyond both the base model
    and its correct-data ``control`` arm (score: the smaller of the two increases), with each arm's
    delta vs base. Arms are ``(label, stats)``."""
    pos, ctrl = positive[1], control[1] if control else None
    d_base = (pos.mean - base.mean).double()
    score = torch.minimum(d_base, (pos.mean - ctrl.mean).double()) if ctrl is not None else d_base
    order = sorted(range(len(score)), key=lambda i: (-float(score[i]), i))
    arms = dict([positive] + ([control] if control else []))
    deltas = {lab: (st.mean - base.mean).double() for lab, st in arms.items()}
    return Ranking(order, score, deltas, [positive[0]], base, arms)
