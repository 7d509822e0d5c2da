"""Residual-stream activations after decoder layer L (``blocks.{L}.hook_resid_post``).

Two ways in:

* :func:`capture` streams a token source (corpus documents or chat transcripts) through the model
  up to layer L only and writes sharded safetensors plus ``index.json`` (model id, layer, dtype,
  token count, source). Memory stays flat; an interrupted capture resumes where the last shard
  ended. :class:`ActivationStore` reads the shards back.
* :func:`collect` returns activations for a handful of texts/chats in memory, one
  :class:`SeqActs` per input, with a mask of the answer (assistant) tokens.

Modules: :mod:`~emkit.activations.forward` (the forward pass that stops at layer L),
:mod:`~emkit.activations.tokens` (texts and chats as token windows and padded batches),
:mod:`~emkit.activations.memory` (:func:`collect`), :mod:`~emkit.activations.shards`
(:func:`capture`) and :mod:`~emkit.activations.store` (the folder format, :class:`ActivationStore`).
"""

from emkit.activations.forward import MAX_NORM_RATIO, inlier_mask, run_to_layer
from emkit.activations.memory import SeqActs, collect
from emkit.activations.shards import capture
from emkit.activations.store import DTYPES, FORMAT, INDEX, ActivationStore, read_index, write_store
from emkit.activations.tokens import tokenize_item

__all__ = ["DTYPES", "FORMAT", "INDEX", "MAX_NORM_RATIO", "ActivationStore", "SeqActs", "capture", "collect",
           "inlier_mask", "read_index", "run_to_layer", "tokenize_item", "write_store"]
