"""emkit: a toolkit for emergent-misalignment research.

Induce emergent misalignment by narrow fine-tuning, measure it with judges, explain it by
model diffing with sparse autoencoders, test latents causally by steering, predict it, and
repair it. Heavy modules are imported lazily so ``import emkit`` stays fast.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__version__ = "0.1.0"

# PEFT calls a transformers method deprecated in v5 on every adapter load; nothing a user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

_LAZY = {
    "load_model": "emkit.models.load",
    "generate": "emkit.generate",
    "SamplingConfig": "emkit.generate",
    "Run": "emkit.run",
    "EmkitError": "emkit.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emkit' has no attribute {name!r}")
