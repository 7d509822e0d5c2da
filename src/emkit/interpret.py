"""Interpret SAE latents: top-activating contexts, logit lens, activation histogram, optional LLM label.

* :func:`top_contexts_from_store` reads a capture folder (its shards keep each row's token, input
  number and position), so contexts come without running the model again; :func:`top_contexts`
  runs the model on any texts/chats. Each :class:`Context` holds the window's tokens and which one
  activated, for highlighting in the report.
* :func:`logit_lens`: the tokens a decoder direction promotes and suppresses. We use
  ``W_U (g * d)`` where ``g`` is the final norm's weight (RMSNorm, or LayerNorm after centring
  ``d``): adding ``d`` to the last residual moves the logits along this vector up to a positive
  scale (the norm's 1/rms), so its ranking is what the model would do; the plain ``W_U d`` used in
  some tools ignores the per-dimension gain. ``through_norm=False`` gives that plain version.
* :func:`explain` asks an LLM for a one-line label from the top contexts, only when the caller
  passes a completion function or an API model (never needed offline).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from emkit.activations import MAX_NORM_RATIO, inlier_mask
from emkit.errors import EmkitError


@dataclass
class Context:
    """A window of tokens around one activation of a latent; ``tokens[highlight]`` is the activating token."""

    latent: int
    value: float
    tokens: list[str]
    highlight: int
    seq: int
    pos: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def marked(self, left: str = "[[", right: str = "]]") -> str:
        """The window as text with the activating token wrapped in markers."""
        t = list(self.tokens)
        t[self.highlight] = f"{left}{t[self.highlight]}{right}"
        return "".join(t)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_dict(self, acts: bool = True) -> dict[str, Any]:
        """The report's shape: tokens, ``peak`` (the activating token), its value and, with ``acts``,
        per-token activations (the value at the peak, 0 elsewhere)."""
        d: dict[str, Any] = {"tokens": self.tokens, "peak": self.highlight, "value": self.value}
        if acts:
            d["acts"] = [self.value if i == self.highlight else 0.0 for i in range(len(self.tokens))]
        return d


@dataclass
class LatentCard:
    """What the report shows for one latent."""

    latent: int
    contexts: list[Context]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    histogram: dict[str, Any]
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["contexts"] = [c.to_dict() for c in self.contexts]
        return d

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        """The report's card (``extra``, e.g. rank and score, added): contexts, promoted and
        suppressed tokens, the histogram of nonzero activations, firing rate and label."""
        h = self.histogram
        return {"latent": self.latent, **extra, "contexts": [c.as_dict() for c in self.contexts],
                "promoted": [list(x) for x in self.promoted], "suppressed": [list(x) for x in self.suppressed],
                "hist": {"edges": h.get("edges", []), "counts": h.get("counts", [])},
                "firing_rate": h.get("firing_rate"), "label": self.label}

    def brief_dict(self, n_contexts: int = 2, **extra: Any) -> dict[str, Any]:
        """A short card (``extra`` added): label, promoted tokens and the first ``n_contexts`` contexts."""
        return {"latent": self.latent, **extra, "label": self.label, "promoted": [list(x) for x in self.promoted],
                "contexts": [c.as_dict(acts=False) for c in self.contexts[:n_contexts]]}


class _TopTracker:
    """Running top-``n`` (value, row id) per chosen latent, plus all nonzero values for histograms."""

    def __init__(self, latents: Sequence[int], n: int):
        self.latents = torch.tensor(list(latents), dtype=torch.long)
        self.n = n
        self.vals = torch.full((n, len(self.latents)), -1.0)
        self.rows = torch.full((n, len(self.latents)), -1, dtype=torch.long)
        self.nonzero: list[list[torch.Tensor]] = [[] for _ in self.latents]
        self.n_tokens = 0

    @torch.no_grad()
    def add(self, sae: Any, acts: torch.Tensor, row_ids: torch.Tensor) -> None:
        idx, vals = sae.encode(acts.to(sae.W_dec.device))
        idx, vals = idx.cpu(), vals.float().cpu()
        # [rows, chosen latents]: each chosen latent's activation (0 when not among the top k)
        hit = idx.unsqueeze(-1) == self.latents.view(1, 1, -1)
        dense = (vals.unsqueeze(-1) * hit).sum(1)
        for j in range(len(self.latents)):
            nz = dense[:, j][dense[:, j] > 0]
            if len(nz):
                self.nonzero[j].append(nz)
        v = torch.cat([self.vals, dense])
        r = torch.cat([self.rows, row_ids.view(-1, 1).expand(-1, len(self.latents))])
        top_v, top_i = v.topk(min(self.n, len(v)), dim=0)
        self.vals, self.rows = top_v, r.gather(0, top_i)
        self.n_tokens += len(acts)

    def histogram(self, j: int, bins: int) -> dict[str, Any]:
        vals = torch.cat(self.nonzero[j]).numpy() if self.nonzero[j] else np.zeros(0)
        counts, edges = np.histogram(vals, bins=bins) if len(vals) else (np.zeros(0, int), np.zeros(0))
        return {"counts": counts.tolist(), "edges": [float(e) for e in edges], "n_tokens": self.n_tokens,
                "n_active": int(len(vals)), "firing_rate": len(vals) / max(1, self.n_tokens),
                "max": float(vals.max()) if len(vals) else 0.0, "mean_active": float(vals.mean()) if len(vals) else 0.0}

    def results(self, bins: int, context_at: Callable[[int, float, int], Context]
                ) -> tuple[dict[int, list[Context]], dict[int, dict[str, Any]]]:
        """Each latent's top contexts, best first (``context_at(latent, value, row)`` builds one), and its histogram."""
        lats = self.latents.tolist()
        contexts = {lat: [context_at(lat, float(v), row) for v, row in
                          zip(self.vals[:, j].tolist(), self.rows[:, j].tolist(), strict=True) if v > 0 and row >= 0]
                    for j, lat in enumerate(lats)}
        return contexts, {lat: self.histogram(j, bins) for j, lat in enumerate(lats)}


def _window(tok: Any, tokens: Sequence[int], at: int, before: int, after: int) -> tuple[list[str], int]:
    s, e = max(0, at - before), min(len(tokens), at + after + 1)
    strs = [tok.decode([t]) for t in tokens[s:e]]
    return strs, at - s


def _check_latents(sae: Any, latents: Sequence[int]) -> list[int]:
    out = [int(x) for x in latents]
    bad = [x for x in out if not 0 <= x < sae.num_latents]
    if bad:
        raise EmkitError(f"latent(s) {bad} out of range", hint=f"this SAE has latents 0..{sae.num_latents - 1}")
    if not out:
        raise EmkitError("no latents to interpret")
    return out


def top_contexts_from_store(sae: Any, store: Any, tok: Any, latents: Sequence[int], *, n: int = 10,
                            before: int = 12, after: int = 4, max_tokens: int | None = None, bins: int = 30,
                            progress: bool = False) -> tuple[dict[int, list[Context]], dict[int, dict[str, Any]]]:
    """Top-``n`` contexts and activation histograms per latent, from a capture folder's shards."""
    from tqdm.auto import tqdm

    latents = _check_latents(sae, latents)
    tr = _TopTracker(latents, n)
    offsets, seen = [], 0
    for i in tqdm(range(len(store.shards)), desc="top contexts", disable=not progress):
        if max_tokens is not None and seen >= max_tokens:
            break
        acts = store.acts(i)
        if max_tokens is not None:
            acts = acts[: max_tokens - seen]
        offsets.append(seen)
        tr.add(sae, acts, torch.arange(seen, seen + len(acts)))
        seen += len(acts)
    meta: dict[int, dict[str, torch.Tensor]] = {}

    def context_at(lat: int, v: float, row: int) -> Context:
        shard = max(k for k, o in enumerate(offsets) if o <= row)
        if shard not in meta:
            m = store.load(shard, ("seq", "pos", "win_id", "win_len", "win_tokens"))
            m["win_start"] = torch.cumsum(m["win_len"].long(), 0) - m["win_len"].long()
            meta[shard] = m
        m = meta[shard]
        r = row - offsets[shard]
        w = int(m["seq"][r])
        wi = int((m["win_id"] == w).nonzero()[0, 0])
        a = int(m["win_start"][wi])
        toks = m["win_tokens"][a : a + int(m["win_len"][wi])].tolist()
        at = int(m["pos"][r])
        strs, hl = _window(tok, toks, at, before, after)
        return Context(lat, v, strs, hl, w, at)

    return tr.results(bins, context_at)


def top_contexts(sae: Any, model: Any, tok: Any, layer: int, items: Iterable[Any], latents: Sequence[int], *,
                 n: int = 10, before: int = 12, after: int = 4, max_length: int = 256, max_items: int | None = None,
                 batch_size: int = 8, chunk: int = 64, bins: int = 30, max_norm_ratio: float | None = MAX_NORM_RATIO,
                 progress: bool = False) -> tuple[dict[int, list[Context]], dict[int, dict[str, Any]]]:
    """Top-``n`` contexts and histograms per latent, running the model on texts or chats.

    Position 0 and rows with a massive norm are left out, as in :func:`emkit.activations.capture`.
    """
    from emkit.activations import collect

    latents = _check_latents(sae, latents)
    tr = _TopTracker(latents, n)
    ids: list[list[int]] = []
    pending: list[Any] = []
    row_seq: list[tuple[int, int]] = []

    def flush() -> None:
        seqs = collect(model, tok, layer, pending, max_length=max_length, batch_size=batch_size)
        for q in seqs:
            s = len(ids)
            ids.append(q.ids)
            if len(q.ids) < 2:
                continue
            keep = inlier_mask(q.acts[1:], max_norm_ratio)
            start = len(row_seq)
            row_seq.extend((s, p + 1) for p in keep.nonzero().flatten().tolist())
            if len(row_seq) > start:
                tr.add(sae, q.acts[1:][keep], torch.arange(start, len(row_seq)))
        pending.clear()

    for k, item in enumerate(items):
        if max_items is not None and k >= max_items:
            break
        pending.append(item)
        if len(pending) >= chunk:
            flush()
    if pending:
        flush()

    def context_at(lat: int, v: float, row: int) -> Context:
        s, p = row_seq[row]
        strs, hl = _window(tok, ids[s], p, before, after)
        return Context(lat, v, strs, hl, s, p)

    return tr.results(bins, context_at)


@torch.no_grad()
def logit_lens(model: Any, tok: Any, direction: torch.Tensor, k: int = 10, through_norm: bool = True
               ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """``(promoted, suppressed)``: the ``k`` tokens whose logits the direction raises / lowers most."""
    from emkit.models.layers import final_norm

    unembed = model.get_output_embeddings()
    if unembed is None:
        raise EmkitError(f"{type(model).__name__} has no output embedding to read logits from")
    w = unembed.weight
    d = direction.to(w.device, w.dtype).flatten()
    if d.shape[0] != w.shape[1]:
        raise EmkitError(f"direction width {d.shape[0]} does not match the model's {w.shape[1]}")
    if through_norm:
        norm = final_norm(model)
        if isinstance(norm, torch.nn.LayerNorm):
            d = d - d.mean()
        gain = getattr(norm, "weight", None)
        if gain is not None:
            d = d * gain.to(d.dtype)
    logits = (w @ d).float().cpu()
    top = logits.topk(k)
    bottom = (-logits).topk(k)
    promoted = [(tok.decode([i]), float(v)) for v, i in zip(top.values, top.indices.tolist(), strict=True)]
    suppressed = [(tok.decode([i]), -float(v)) for v, i in zip(bottom.values, bottom.indices.tolist(), strict=True)]
    return promoted, suppressed


EXPLAIN_PROMPT = (
    "Below are text snippets where one feature of a language model's internal activations fires most "
    "strongly. The token where it fires is wrapped in [[ ]]. In at most ten words, say what the feature "
    "detects. Answer with the label only.\n\n{snippets}"
)


def explain(contexts: Sequence[Context], *, complete: Callable[[str], str] | None = None, model: str | None = None,
            base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", max_contexts: int = 10) -> str | None:
    """A one-line label from the top contexts, via ``complete(prompt)`` or an OpenAI-compatible ``model``.

    Returns None when neither is given (labels are optional and never needed offline).
    """
    if not contexts:
        return None
    if complete is None:
        if not model:
            return None
        complete = _api_completion(model, base_url, api_key_env)
    snippets = "\n".join(f"{i + 1}. {c.marked()!r}" for i, c in enumerate(contexts[:max_contexts]))
    text = complete(EXPLAIN_PROMPT.format(snippets=snippets)) or ""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    return line[:200] or None


def _api_completion(model: str, base_url: str | None, api_key_env: str) -> Callable[[str], str]:
    key = os.environ.get(api_key_env)
    if not key:
        raise EmkitError(f"the explainer needs an API key in ${api_key_env}", hint="export it, or leave --explainer out")
    import openai

    client = openai.OpenAI(api_key=key, base_url=base_url or os.environ.get("OPENAI_BASE_URL"))

    def complete(prompt: str) -> str:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=40)
        return r.choices[0].message.content or ""

    return complete


def latent_cards(sae: Any, model: Any, tok: Any, latents: Sequence[int], *, store: Any = None,
                 items: Iterable[Any] | None = None, layer: int | None = None, n_contexts: int = 10,
                 k_logits: int = 10, max_tokens: int | None = None, through_norm: bool = True,
                 complete: Callable[[str], str] | None = None, explainer: str | None = None,
                 progress: bool = False) -> list[LatentCard]:
    """Cards for ``latents``: contexts (from ``store``, else by running ``model`` on ``items``), logit lens,
    histogram, and an LLM label when ``complete`` or ``explainer`` is given."""
    if store is not None:
        ctxs, hists = top_contexts_from_store(sae, store, tok, latents, n=n_contexts, max_tokens=max_tokens,
                                              progress=progress)
    elif items is not None:
        lay = sae.cfg.layer if layer is None else layer
        if lay is None or lay < 0:
            raise EmkitError("the SAE does not record its layer", hint="pass the layer explicitly")
        ctxs, hists = top_contexts(sae, model, tok, lay, items, latents, n=n_contexts, progress=progress)
    else:
        raise EmkitError("give an activation store or texts to find top-activating contexts in")
    cards = []
    for lat in latents:
        promoted, suppressed = logit_lens(model, tok, sae.W_dec[lat], k_logits, through_norm)
        label = explain(ctxs[lat], complete=complete, model=explainer) if (complete or explainer) else None
        cards.append(LatentCard(lat, ctxs[lat], promoted, suppressed, hists[lat], label))
    return cards
