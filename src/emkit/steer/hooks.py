"""Forward hooks on a decoder block that edit the residual stream: :func:`steer` and :func:`ablate`.

``with steer(model, layer, direction, alpha):`` adds ``alpha * scale * unit(direction)`` to the
output of decoder block ``layer`` (the residual stream ``blocks.{layer}.hook_resid_post``), where
``scale`` is the layer's typical residual norm (:func:`emkit.directions.residual_scale`), so
``alpha`` means the same on any model. ``with ablate(model, layer, direction):`` removes the
component along the direction. Both are context managers that always remove their hook (also on an
exception); they nest (several directions, layers or models at once, applied in the order entered),
and work under ``model.generate`` and in training (the edit is differentiable).

Positions: ``"all"`` edits every token; ``"answer"`` only the tokens generated after the prompt
(during ``generate`` with its KV cache — the prompt pass is left alone, so the first answer token is
sampled unsteered and every later one is conditioned on steered states); an int ``k`` edits the
positions ``>= k`` of the (left-padded) sequence, e.g. the answer part of a teacher-forced pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from emkit.directions import SCALE_METHOD, Direction, as_vector, cached_scale, residual_scale
from emkit.errors import EmkitError
from emkit.models.layers import (
    block_output,
    decoder_layers,
    hidden_size,
    parse_hook_name,
    replace_block_output,
)

Positions = str | int
EditFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


@dataclass
class Edit:
    """What a live hook does; ``calls`` counts block forwards it saw, ``edited`` those it changed."""

    kind: str
    layer: int
    alpha: float = 0.0
    scale: float = 1.0
    positions: Positions = "all"
    scale_method: str = ""
    calls: int = 0
    edited: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def norm(self) -> float:
        """Length of the vector added per token (``|alpha| * scale``)."""
        return abs(self.alpha) * self.scale


def layer_index(model: Any, layer: int | str) -> int:
    """A decoder-layer index from an int or a ``blocks.{L}.hook_resid_post`` name, range-checked."""
    idx = parse_hook_name(layer) if isinstance(layer, str) else int(layer)
    n = len(decoder_layers(model))
    if not 0 <= idx < n:
        raise EmkitError(f"layer {idx} is out of range", hint=f"the model has layers 0..{n - 1}")
    return idx


def _unit(model: Any, direction: Direction | torch.Tensor) -> torch.Tensor:
    v = as_vector(direction)
    d = hidden_size(model)
    if v.numel() != d:
        raise EmkitError(f"direction has {v.numel()} dimensions but the model's residual stream has {d}",
                         hint="was it made on another model?")
    return v / v.norm()


def _cache_len(kwargs: dict[str, Any]) -> int | None:
    """Tokens in the KV cache after this block ran (None without a cache object)."""
    for k in _CACHE_KWARGS:
        c = kwargs.get(k)
        if c is not None and hasattr(c, "get_seq_length"):
            try:
                return int(c.get_seq_length())
            except Exception:  # a cache type that cannot tell
                return None
    return None


class _Hook:
    """Forward hook applying ``fn(hidden, mask)``; ``mask`` is a ``[T]`` bool over positions (None = all)."""

    def __init__(self, fn: EditFn, positions: Positions, edit: Edit):
        if not (positions in ("all", "answer") or (isinstance(positions, int) and positions >= 0)):
            raise EmkitError(f"unknown positions {positions!r}", hint="use 'all', 'answer' or a start index >= 0")
        self.fn, self.positions, self.edit = fn, positions, edit
        self.prompt_len: int | None = None

    def _mask(self, t: int, kwargs: dict[str, Any], device: torch.device) -> torch.Tensor | None | bool:
        if self.positions == "all":
            return None
        total = _cache_len(kwargs)
        past = 0 if total is None else max(total - t, 0)
        if self.positions == "answer":
            if total is None:  # no KV cache: only single-token steps can be told apart from a prompt pass
                if t > 1:
                    self.prompt_len = None
                    return False
                return True
            if past == 0 or self.prompt_len is None:  # a prompt (prefill) pass: remember where answers start
                self.prompt_len = past + t
                return False
            start = self.prompt_len
        else:
            start = int(self.positions)
        pos = torch.arange(past, past + t, device=device)
        mask = pos >= start
        return bool(mask.all()) if mask.all() or not mask.any() else mask

    def __call__(self, _module: Any, _args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        self.edit.calls += 1
        h = block_output(output)
        mask = self._mask(h.shape[1], kwargs, h.device)
        if mask is False:
            return None
        self.edit.edited += 1
        return replace_block_output(output, self.fn(h, None if mask is True else mask))


@contextmanager
def _hooked(model: Any, layer: int, fn: EditFn, edit: Edit) -> Iterator[Edit]:
    hook = _Hook(fn, edit.positions, edit)
    handle = decoder_layers(model)[layer].register_forward_hook(hook, with_kwargs=True)
    try:
        yield edit
    finally:
        handle.remove()


def _cast(vec: torch.Tensor, like: torch.Tensor, memo: dict) -> torch.Tensor:
    key = (like.dtype, like.device)
    if key not in memo:
        memo[key] = vec.to(device=like.device, dtype=like.dtype)
    return memo[key]


def resolve_scale(model: Any, layer: int, scale: float | None, tokenizer: Any) -> float:
    """``scale`` if given, else the cached or freshly measured residual norm (needs ``tokenizer``)."""
    if scale is not None:
        if not scale > 0:
            raise EmkitError(f"scale must be positive, got {scale}")
        return float(scale)
    cached = cached_scale(model, layer)
    if cached is not None:
        return cached
    if tokenizer is None:
        raise EmkitError("steering needs the layer's residual norm",
                         hint="pass tokenizer= (it is measured once and cached) or scale=")
    return residual_scale(model, tokenizer, layer)


@contextmanager
def steer(model: Any, layer: int | str, direction: Direction | torch.Tensor, alpha: float,
          positions: Positions = "all", *, scale: float | None = None, tokenizer: Any = None) -> Iterator[Edit]:
    """Add ``alpha * scale * unit(direction)`` to block ``layer``'s output while the context is open.

    ``scale`` defaults to the layer's residual norm (measured with ``tokenizer`` and cached per
    model and layer); pass ``scale=1.0`` for raw units. Yields an :class:`Edit` recording the
    scale used. ``alpha == 0`` leaves every output bit-identical.
    """
    idx = layer_index(model, layer)
    u = _unit(model, direction)
    s = resolve_scale(model, idx, scale, tokenizer)
    method = "given" if scale is not None else SCALE_METHOD
    edit = Edit("steer", idx, float(alpha), s, positions, method,
                meta={"direction": getattr(direction, "name", "vector")})
    add = u * (float(alpha) * s)
    memo: dict = {}

    def fn(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if alpha == 0:  # not even h + 0: the outputs stay bit-identical
            return h
        v = _cast(add, h, memo)
        if mask is None:
            return h + v
        return h + v * mask.to(h.dtype)[None, :, None]

    with _hooked(model, idx, fn, edit) as e:
        yield e


@contextmanager
def ablate(model: Any, layer: int | str, direction: Direction | torch.Tensor,
           positions: Positions = "all") -> Iterator[Edit]:
    """Project the direction out of block ``layer``'s output: ``h - (h . u) u`` with ``u`` its unit vector."""
    idx = layer_index(model, layer)
    u = _unit(model, direction)
    edit = Edit("ablate", idx, positions=positions, meta={"direction": getattr(direction, "name", "vector")})
    memo: dict = {}

    def fn(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        uu = _cast(u, h, memo)
        proj = (h @ uu)[..., None] * uu
        if mask is not None:
            proj = proj * mask.to(h.dtype)[None, :, None]
        return h - proj

    with _hooked(model, idx, fn, edit) as e:
        yield e
