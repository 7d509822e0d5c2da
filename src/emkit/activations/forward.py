"""The forward pass up to decoder layer L: a hook on block L records its output and stops the pass.

The hook raises a private exception that is caught here, so layers above L are never run (works
for any architecture whose blocks :func:`emkit.models.layers.decoder_layers` finds). Also which
rows count as "massive activations" (:data:`MAX_NORM_RATIO`, :func:`inlier_mask`).
"""

from __future__ import annotations

from typing import Any

import torch

from emkit.errors import EmkitError
from emkit.models.layers import block_output, decoder_layers

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


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def run_to_layers(model: Any, layers: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                  ) -> dict[int, torch.Tensor]:
    """Residual stream after each decoder block in ``layers``, ``{layer: [batch, seq, d]}``; blocks above the
    highest never run."""
    blocks = decoder_layers(model)
    bad = [n for n in layers if not 0 <= n < len(blocks)]
    if bad or not layers:
        raise EmkitError(f"layers {bad or layers} are out of range", hint=f"the model has layers 0..{len(blocks) - 1}")
    got: dict[int, torch.Tensor] = {}
    last = max(layers)

    def hook_for(n: int) -> Any:
        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            got[n] = block_output(out)
            if n == last:
                raise _StopForward
        return hook

    handles = [blocks[n].register_forward_hook(hook_for(n)) for n in sorted(set(layers))]
    dev = _device(model)
    try:
        model(input_ids=input_ids.to(dev),
              attention_mask=None if attention_mask is None else attention_mask.to(dev), use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(layers) - set(got))
    if missing:
        raise EmkitError(f"decoder blocks {missing} were not called during the forward pass")
    return got


def run_to_layer(model: Any, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Residual stream after decoder block ``layer`` for a batch, ``[batch, seq, d]``; later blocks never run."""
    return run_to_layers(model, [layer], input_ids, attention_mask)[layer]
