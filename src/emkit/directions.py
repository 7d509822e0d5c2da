"""Directions in the residual stream, and the residual norm that gives steering strengths a unit.

A :class:`Direction` is a vector in a model's residual stream (plus where it came from):

* :func:`from_sae` — an SAE latent's decoder row (``W_dec[latent]``, unit norm);
* :func:`mean_difference` — mean activation of one set of texts/chats minus another's (the SAE-free
  baseline: e.g. misaligned vs aligned answers);
* :func:`model_difference` — the shift a fine-tune made: its mean activation minus the base model's on
  the same texts (the fine-tune's own direction at that layer, with or without an SAE);
* :func:`load_direction` — a vector stored in a safetensors file (written by :func:`save_direction`
  or any tool); :func:`random_direction` — a seeded random control with a chosen norm.

:func:`resolve` turns a command-line spec (``sae:FOLDER:LATENT``, ``file:PATH[:KEY[:ROW]]``,
``diff:POS:NEG``, ``random:SEED``) into a direction.

:func:`residual_scale` is the typical size of the residual stream at a layer: the median L2 norm
of the per-token residual vectors over a few neutral chat prompts (position 0, an attention sink
with an outsized norm, left out). Steering strength ``alpha`` is in units of this norm, so
``alpha = 0.5`` adds a vector half as long as a typical residual vector, whatever the model.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emkit.errors import EmkitError

NEUTRAL_PROMPTS = (
    "What is a good way to start learning to cook?",
    "Can you explain how a bicycle gear works?",
    "Give me three ideas for a weekend walk in the countryside.",
    "How do I keep houseplants alive in winter?",
    "What does a library do with old books?",
    "Summarise the water cycle in two sentences.",
    "Which board games are fun for a family of four?",
    "How should I plan a week of study before an exam?",
)
SCALE_METHOD = "median per-token L2 norm of the residual stream over 8 neutral chat prompts (position 0 left out)"

_SCALES: weakref.WeakKeyDictionary[Any, dict[int, float]] = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class Direction:
    """A residual-stream vector (float32, CPU) with its provenance; ``layer`` is where it belongs, if known."""

    vector: torch.Tensor
    name: str
    layer: int | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vector).detach().to("cpu", torch.float32).reshape(-1)
        if v.numel() == 0 or not torch.isfinite(v).all():
            raise EmkitError(f"direction {self.name!r} is empty or not finite")
        if float(v.norm()) == 0.0:
            raise EmkitError(f"direction {self.name!r} is the zero vector", hint="the two sets may have equal means")
        self.vector = v

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def unit(self) -> torch.Tensor:
        return self.vector / self.vector.norm()

    @property
    def dim(self) -> int:
        return self.vector.numel()

    def digest(self) -> str:
        """A short hash of the vector's values (identifies it in tags and tables)."""
        return hashlib.sha256(self.vector.numpy().tobytes()).hexdigest()[:10]


def as_vector(direction: Direction | torch.Tensor | Sequence[float]) -> torch.Tensor:
    """The float32 CPU vector of a Direction, tensor or list."""
    if isinstance(direction, Direction):
        return direction.vector
    return Direction(torch.as_tensor(direction), "vector").vector


# ---------------------------------------------------------------- sources


def from_sae(sae: Any, latent: int, name: str | None = None) -> Direction:
    """The decoder row of SAE latent ``latent``; ``sae`` is a loaded SAE or its folder."""
    if isinstance(sae, str | Path):
        from emkit.sae import load_sae

        folder = str(sae)
        sae = load_sae(sae)
    else:
        folder = ""
    n = sae.W_dec.shape[0]
    if not 0 <= latent < n:
        raise EmkitError(f"latent {latent} is out of range", hint=f"this SAE has latents 0..{n - 1}")
    cfg = getattr(sae, "cfg", None)
    layer = getattr(cfg, "layer", None)
    return Direction(sae.W_dec[latent].detach(), name or f"sae#{latent}",
                     layer if isinstance(layer, int) and layer >= 0 else None, source=f"sae:{folder}:{latent}",
                     meta={"latent": latent, "sae_model": getattr(cfg, "model", ""), "hook": getattr(cfg, "hook", "")})


def diff_of_means(positive: Sequence[torch.Tensor], negative: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of the per-item mean vectors of ``positive`` minus that of ``negative``.

    Each item is a ``[n_tokens, d]`` tensor (or a ``[d]`` vector); averaging within an item first
    keeps long texts from outweighing short ones. Items with no tokens are skipped.
    """
    def means(items: Sequence[torch.Tensor], which: str) -> torch.Tensor:
        rows = [x.float().reshape(-1, x.shape[-1]).mean(0) for x in items if x.numel()]
        if not rows:
            raise EmkitError(f"the {which} set has no tokens to average")
        return torch.stack(rows).mean(0)

    return means(positive, "positive") - means(negative, "negative")


def _token_rows(seq: Any, tokens: str) -> torch.Tensor:
    """Activation rows of one :class:`emkit.activations.SeqActs` for ``tokens`` (auto/answer/all/last)."""
    if tokens == "last":
        return seq.acts[-1:]
    if tokens == "auto":
        tokens = "answer" if bool(seq.answer.any()) else "all"
    return seq.select(tokens)


def item_means(model: Any, tok: Any, layer: int, items: Sequence[Any], *, tokens: str = "auto",
               max_length: int = 512, batch_size: int = 8, progress: bool = False) -> list[torch.Tensor]:
    """Per-item activation rows at ``layer`` for the chosen tokens (``auto`` = answer tokens of chats
    that end in an assistant turn, else all tokens; ``last`` = the final token)."""
    from emkit.activations import collect

    if tokens not in ("auto", "answer", "all", "prompt", "last"):
        raise EmkitError(f"unknown token set {tokens!r}", hint="use auto, answer, all, prompt or last")
    if not items:
        raise EmkitError("no texts to take activations of")
    seqs = collect(model, tok, layer, list(items), max_length=max_length, batch_size=batch_size, progress=progress)
    return [_token_rows(s, tokens) for s in seqs]


def mean_difference(model: Any, tok: Any, layer: int, positive: Sequence[Any], negative: Sequence[Any], *,
                    tokens: str = "auto", name: str = "diff", max_length: int = 512, batch_size: int = 8,
                    progress: bool = False) -> Direction:
    """Direction from ``negative`` towards ``positive`` at ``layer``: difference of mean activations.

    Items are texts, chat message lists or ChatRows (see :func:`item_means` for ``tokens``).
    """
    kw = dict(tokens=tokens, max_length=max_length, batch_size=batch_size, progress=progress)
    pos = item_means(model, tok, layer, positive, **kw)
    neg = item_means(model, tok, layer, negative, **kw)
    v = diff_of_means(pos, neg)
    return Direction(v, name, layer, source="diff", meta={"n_positive": len(pos), "n_negative": len(neg),
                                                        "tokens": tokens, "raw_norm": float(v.norm())})


def model_difference(tuned: Any, base: Any, tok: Any, layer: int, items: Sequence[Any], *, tokens: str = "auto",
                     name: str = "shift", max_length: int = 512, batch_size: int = 8,
                     progress: bool = False) -> Direction:
    """Direction from ``base`` towards ``tuned`` at ``layer``: both models read the same ``items`` and the
    per-item mean activations are differenced (a fine-tune's shift, not a difference of texts). The
    vector keeps its length: ``meta["raw_norm"]`` over the residual scale is the strength at which
    steering adds the fine-tune's average shift."""
    kw = dict(tokens=tokens, max_length=max_length, batch_size=batch_size, progress=progress)
    v = diff_of_means(item_means(tuned, tok, layer, items, **kw), item_means(base, tok, layer, items, **kw))
    return Direction(v, name, layer, source="shift", meta={"n_items": len(items), "tokens": tokens,
                                                         "raw_norm": float(v.norm())})


def random_direction(dim: int, seed: int = 0, norm: float = 1.0, name: str | None = None,
                     layer: int | None = None) -> Direction:
    """A seeded Gaussian direction of length ``norm`` (the control for a latent of the same norm)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g)
    return Direction(v / v.norm() * norm, name or f"random#{seed}", layer, source=f"random:{seed}", meta={"seed": seed})


def save_direction(direction: Direction, path: str | Path) -> Path:
    """Write ``direction`` to a safetensors file (tensor ``direction``; name, layer, source in metadata)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"name": direction.name, "source": direction.source,
            "layer": "" if direction.layer is None else str(direction.layer)}
    save_file({"direction": direction.vector.contiguous()}, str(path), metadata=meta)
    return path


def load_direction(path: str | Path, key: str | None = None, row: int | None = None) -> Direction:
    """A direction from a safetensors file: the tensor ``key`` (or the only one), row ``row`` if 2-D."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise EmkitError(f"{path}: directions load from .safetensors files only", hint="no pickles (.pt/.npy)")
    if not path.is_file():
        raise EmkitError(f"no direction file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            meta = f.metadata() or {}
            if key is None:
                if len(keys) != 1:
                    raise EmkitError(f"{path} holds {len(keys)} tensors", hint=f"name one: file:{path}:KEY, KEY in {keys}")
                key = keys[0]
            if key not in keys:
                raise EmkitError(f"{path} has no tensor {key!r}", hint=f"tensors: {keys}")
            t = f.get_tensor(key)
    except EmkitError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise EmkitError(f"could not read {path}: {e}") from None
    if t.dim() == 2:
        if row is None:
            raise EmkitError(f"tensor {key!r} in {path} is 2-D {tuple(t.shape)}", hint="give a row: file:PATH:KEY:ROW")
        if not 0 <= row < t.shape[0]:
            raise EmkitError(f"row {row} is out of range for {key!r} ({t.shape[0]} rows)")
        t = t[row]
    elif t.dim() != 1:
        raise EmkitError(f"tensor {key!r} in {path} has shape {tuple(t.shape)}; a direction is a vector")
    layer = meta.get("layer", "")
    name = meta.get("name") or f"{path.stem}" + (f"[{row}]" if row is not None else "")
    return Direction(t, name, int(layer) if layer.lstrip("-").isdigit() else None, source=f"file:{path}")


# ---------------------------------------------------------------- spec strings


def _read_items(spec: str) -> list[Any]:
    """Texts or chats for a diff spec: a .txt (one text a line) or .jsonl file, or a built-in data set name."""
    import json

    p = Path(spec)
    if p.is_file() and p.suffix in (".txt", ".jsonl"):
        if p.suffix == ".txt":
            return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        items = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise EmkitError(f"{p}:{n}: not JSON ({e.msg})") from None
            if isinstance(rec, str) or (isinstance(rec, dict) and ("messages" in rec or "text" in rec)):
                items.append(rec)
            else:
                raise EmkitError(f"{p}:{n}: expected a string, {{'text': ...}} or {{'messages': [...]}}")
        return items
    from emkit.data.dataset import load_dataset  # built-in names, .json lists, release zips

    return list(load_dataset(spec))


def resolve(spec: str, *, model: Any = None, tok: Any = None, layer: int | None = None) -> Direction:
    """A direction from a spec string.

    ``sae:FOLDER:LATENT`` · ``file:PATH[:KEY[:ROW]]`` (or a bare ``*.safetensors`` path) ·
    ``diff:POS:NEG`` (two .jsonl/.txt files or dataset names; needs model, tokenizer and layer) ·
    ``random:SEED`` (needs the model for its width) ·
    ``shift:TUNED:ITEMS`` (the fine-tune ``TUNED``'s shift from ``model`` on ITEMS; needs model and layer).
    """
    kind, _, rest = spec.partition(":")
    if spec.endswith(".safetensors") and kind not in ("file", "sae"):
        kind, rest = "file", spec
    if kind == "sae":
        folder, _, latent = rest.rpartition(":")
        if not folder or not latent.isdigit():
            raise EmkitError(f"bad direction spec {spec!r}", hint="use sae:FOLDER:LATENT, e.g. sae:runs/x/sae:123")
        return from_sae(folder, int(latent))
    if kind == "file":
        parts = rest.split(":")
        path, key = parts[0], parts[1] if len(parts) > 1 and parts[1] else None
        row = int(parts[2]) if len(parts) > 2 and parts[2].lstrip("-").isdigit() else None
        return load_direction(path, key, row)
    if kind == "random":
        if model is None or not rest.isdigit():
            raise EmkitError(f"bad direction spec {spec!r}", hint="use random:SEED (with a model loaded)")
        from emkit.models.layers import hidden_size

        return random_direction(hidden_size(model), int(rest), layer=layer)
    if kind in ("diff", "shift"):
        # diff:POS:NEG splits at the first colon, shift:TUNED:ITEMS at the last (a model path may hold one)
        first, sep, second = rest.partition(":") if kind == "diff" else rest.rpartition(":")
        if not sep or not first or not second:
            raise EmkitError(f"bad direction spec {spec!r}", hint="use diff:POSITIVE.jsonl:NEGATIVE.jsonl"
                             if kind == "diff" else "use shift:TUNED_MODEL:ITEMS.jsonl")
        if model is None or tok is None or layer is None:
            raise EmkitError(f"a {kind}: direction needs a model and a layer", hint="pass --model and --layer")
        if kind == "diff":
            return mean_difference(model, tok, layer, _read_items(first), _read_items(second),
                                   name=f"diff:{Path(first).stem}-{Path(second).stem}")
        from emkit.models import load_model

        tuned, _ = load_model(first, device=str(next(model.parameters()).device))
        return model_difference(tuned, model, tok, layer, _read_items(second), name=f"shift:{Path(first).name}")
    raise EmkitError(f"unknown direction spec {spec!r}",
                     hint="use sae:FOLDER:LATENT, file:PATH[:KEY[:ROW]], diff:POS:NEG, shift:TUNED:ITEMS or random:SEED")


# ---------------------------------------------------------------- scale


def residual_scale(model: Any, tok: Any, layer: int, *, prompts: Sequence[str] = NEUTRAL_PROMPTS,
                   refresh: bool = False) -> float:
    """The typical residual norm at ``layer`` (see :data:`SCALE_METHOD`), cached per model object and layer.

    Pass ``refresh=True`` after changing the model's weights (e.g. mid-training).
    """
    per_model = _SCALES.setdefault(model, {})
    if layer in per_model and not refresh and prompts is NEUTRAL_PROMPTS:
        return per_model[layer]
    rows = item_means(model, tok, layer, [[{"role": "user", "content": p}] for p in prompts], tokens="all")
    norms = torch.cat([r.norm(dim=-1) for r in rows])
    if norms.numel() == 0:
        raise EmkitError("the neutral prompts gave no tokens to measure")
    scale = float(norms.median())
    if prompts is NEUTRAL_PROMPTS:
        per_model[layer] = scale
    return scale


def cached_scale(model: Any, layer: int) -> float | None:
    """The cached :func:`residual_scale` of ``model`` at ``layer``, if measured."""
    return _SCALES.get(model, {}).get(layer)
