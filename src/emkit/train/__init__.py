"""Training: narrow fine-tuning (SFT, GRPO) that induces misalignment, and re-alignment that repairs it.

- :func:`finetune` — LoRA or full SFT, loss on assistant tokens only, resumable bit-exactly on a CPU.
- :func:`train_rl` — GRPO (TRL) with a grader reward for wrong (or right) advice and a guard.
- :func:`realign` — continue SFT on benign rows, storing the misalignment curve.
- :class:`EvalCallback` / :class:`LatentMonitor` — evaluate behaviour or internals every k steps.

The names load on first use, as in :mod:`emkit`: ``emkit.train.config`` (plain dataclasses the CLI
builds its options from) needs no torch, and TRL and the grader's encoder load only when used.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_LAZY = {
    "Callback": "emkit.train.callbacks",
    "EvalCallback": "emkit.train.callbacks",
    "LatentMonitor": "emkit.train.callbacks",
    "StepContext": "emkit.train.callbacks",
    "LoRAConfig": "emkit.train.config",
    "RLConfig": "emkit.train.config",
    "RealignConfig": "emkit.train.config",
    "SFTConfig": "emkit.train.config",
    "read_curve": "emkit.train.realign",
    "realign": "emkit.train.realign",
    "train_rl": "emkit.train.rl",
    "finetune": "emkit.train.sft",
    "model_dir": "emkit.train.sft",
}

__all__ = [
    "Callback",
    "EvalCallback",
    "LatentMonitor",
    "LoRAConfig",
    "RLConfig",
    "RealignConfig",
    "SFTConfig",
    "StepContext",
    "finetune",
    "model_dir",
    "read_curve",
    "realign",
    "train_rl",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emkit.train' has no attribute {name!r}")


class _Package(types.ModuleType):
    """``emkit.train.realign`` stays the function when the submodule of that name loads (as when eager)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "realign" and isinstance(value, types.ModuleType):
            value = value.realign
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
