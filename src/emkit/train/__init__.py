"""Training: narrow fine-tuning (SFT, GRPO) that induces misalignment, and re-alignment that repairs it.

- :func:`finetune` — LoRA or full SFT, loss on assistant tokens only, resumable bit-exactly on a CPU.
- :func:`train_rl` — GRPO (TRL) with a grader reward for wrong (or right) advice and a guard.
- :func:`realign` — continue SFT on benign rows, storing the misalignment curve.
- :class:`EvalCallback` / :class:`LatentMonitor` — evaluate behaviour or internals every k steps.

Heavy modules (TRL, the grader's encoder) load only when used.
"""

from emkit.train.callbacks import Callback, EvalCallback, LatentMonitor, StepContext
from emkit.train.config import LoRAConfig, RealignConfig, RLConfig, SFTConfig
from emkit.train.realign import read_curve, realign
from emkit.train.rl import train_rl
from emkit.train.sft import finetune, model_dir

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
