"""Models: loading (local folder, Hub id, bundled SmolLM2), chat formatting, layer discovery."""

from emkit.models.chat import assistant_mask, format_chat, render_prompt
from emkit.models.layers import decoder_layers, final_norm, hook_name, parse_hook_name
from emkit.models.load import BUNDLED, load_model, load_tokenizer, resolve_device

__all__ = [
    "BUNDLED",
    "assistant_mask",
    "decoder_layers",
    "final_norm",
    "format_chat",
    "hook_name",
    "load_model",
    "load_tokenizer",
    "parse_hook_name",
    "render_prompt",
    "resolve_device",
]
