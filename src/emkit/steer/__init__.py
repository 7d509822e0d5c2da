"""Steering and ablation: forward hooks that edit the residual stream, and the experiments built on them.

* :mod:`emkit.steer.hooks`: ``with steer(model, layer, direction, alpha):`` and
  ``with ablate(model, layer, direction):`` (strength in units of the layer's residual norm).
* :mod:`emkit.steer.experiment`: judged conditions, :func:`dose_response` / :func:`sweep` (the
  usable strength) and :func:`screen` / :func:`causal_screen` (candidate latents + on the base model
  and − on a misaligned one, against random controls).
* :mod:`emkit.steer.tables`: the ``steering`` and ``steering_screen`` tables and their keys.
"""

from emkit.steer.experiment import (
           Arm,
           causal_screen,
           condition,
           dose_response,
           screen,
           sweep,
           usable_strength,
)
from emkit.steer.hooks import Edit, Positions, ablate, layer_index, resolve_scale, steer
from emkit.steer.tables import condition_sampling_hash, rates, steer_tag, top_latents

__all__ = ["Arm", "Edit", "Positions", "ablate", "causal_screen", "condition", "condition_sampling_hash",
           "dose_response", "layer_index", "rates", "resolve_scale", "screen", "steer", "steer_tag", "sweep",
           "top_latents", "usable_strength"]
