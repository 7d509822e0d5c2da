"""Find the decoder layers and residual stream by structure, not by model name.

Works for Llama, Qwen2, Gemma 3, Mistral (``model.layers``), GPT-2 (``transformer.h``) and
PEFT-wrapped versions of them: the decoder stack is the longest ``nn.ModuleList`` of identical
blocks whose length equals the configured number of layers.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from emkit.errors import EmkitError

HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def hook_name(layer: int) -> str:
    """The common name of the residual stream after decoder layer ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def parse_hook_name(name: str) -> int:
    m = HOOK_RE.match(name)
    if not m:
        raise EmkitError(f"unknown hook point {name!r}", hint="use blocks.<L>.hook_resid_post")
    return int(m.group(1))


def _config(model: Any) -> Any:
    cfg = getattr(model, "config", None)
    text_cfg = getattr(cfg, "text_config", None) if cfg is not None else None
    return text_cfg or cfg


def num_layers(model: Any) -> int | None:
    cfg = _config(model)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(cfg, key, None)
        if isinstance(n, int):
            return n
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks."""
    want = num_layers(model)
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        if want is not None and len(mod) != want:
            continue
        # Prefer the shortest path (the text decoder over e.g. a vision tower of equal depth).
        score = (len(mod), -name.count("."))
        if best is None or score > (best[0], -best[1].count(".")):
            best = (len(mod), name, mod)
    if best is None:
        raise EmkitError(
            f"could not find the decoder layers of {type(model).__name__}",
            hint="emkit looks for an nn.ModuleList of identical blocks of length num_hidden_layers",
        )
    return best[2]


def hidden_size(model: Any) -> int:
    cfg = _config(model)
    for key in ("hidden_size", "n_embd", "d_model"):
        n = getattr(cfg, key, None)
        if isinstance(n, int):
            return n
    raise EmkitError("could not find the model's hidden size in its config")


def final_norm(model: nn.Module) -> nn.Module:
    """The normalisation applied to the last residual stream before the unembedding."""
    layers = decoder_layers(model)
    parent_name = None
    for name, mod in model.named_modules():
        if mod is layers:
            parent_name = name.rsplit(".", 1)[0] if "." in name else ""
            break
    parent = model.get_submodule(parent_name) if parent_name else model
    for attr in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        if isinstance(getattr(parent, attr, None), nn.Module):
            return getattr(parent, attr)
    raise EmkitError(f"could not find the final norm of {type(model).__name__}")


def block_output(output: Any) -> torch.Tensor:
    """The residual-stream tensor out of a decoder block's forward output."""
    return output[0] if isinstance(output, tuple | list) else output


def replace_block_output(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden
