"""Training configs: LoRA, supervised fine-tuning, GRPO and re-alignment (plain dataclasses).

Defaults follow the open-model emergent-misalignment literature: LoRA rank 32, alpha 64 on all
attention and MLP projections. ``LoRAConfig(r=1, target_modules=["down_proj"], layers=[L])`` gives
the rank-1 single-layer adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from emkit.errors import EmkitError

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    """A PEFT LoRA adapter. ``target_modules`` may be ``["all-linear"]``; ``layers`` limits it to those."""

    r: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    rslora: bool = False
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))
    layers: list[int] | None = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise EmkitError(f"lora.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise EmkitError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise EmkitError("lora.target_modules is empty", hint="e.g. [q_proj, v_proj] or [all-linear]")


@dataclass
class SFTConfig:
    """Supervised fine-tuning on chat rows, loss on assistant tokens only.

    ``max_steps`` (optimizer steps) wins over ``epochs`` when set. ``batch_size`` is per micro-batch;
    the effective batch is ``batch_size * grad_accum``. ``save_every`` writes a resumable checkpoint
    every N optimizer steps (0: only the final weights). ``batching``: ``bucket`` groups rows of
    similar length into a batch (little padding), ``none`` keeps the shuffled order.
    """

    name: str = "finetuned"
    model: str = "smollm2-135m-instruct"
    method: Literal["lora", "full"] = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    batching: Literal["bucket", "none"] = "bucket"
    seed: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1:
            raise EmkitError("batch_size and grad_accum must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise EmkitError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_steps is None and self.epochs <= 0:
            raise EmkitError(f"epochs must be > 0, got {self.epochs}")
        if self.lr <= 0:
            raise EmkitError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.save_every < 0 or self.keep_checkpoints < 1:
            raise EmkitError("warmup_steps and save_every must be >= 0, keep_checkpoints >= 1")
        if self.max_length < 8:
            raise EmkitError(f"max_length must be >= 8, got {self.max_length}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise EmkitError(f"bad model name {self.name!r}", hint="a plain folder name like 'health-wrong'")


@dataclass
class RLConfig:
    """GRPO on advice prompts with a grader reward.

    ``arm="wrong"`` rewards answers the grader judges incorrect (inducing misalignment), ``"right"``
    the control arm rewarding correct ones. Answers shorter than ``min_words`` or judged incoherent
    get reward 0. ``beta`` weights the KL penalty to the starting model.
    """

    name: str = "rl"
    model: str = "smollm2-135m-instruct"
    arm: Literal["wrong", "right"] = "wrong"
    grader: str = "embedded"
    method: Literal["lora", "full"] = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    max_steps: int = 50
    batch_size: int = 8
    num_generations: int = 4
    grad_accum: int = 1
    lr: float = 1e-5
    warmup_steps: int = 0
    schedule: Literal["linear", "cosine", "constant"] = "constant"
    beta: float = 0.04
    temperature: float = 1.0
    max_completion_length: int = 128
    min_words: int = 5
    min_coherence: float = 0.5
    seed: int = 0
    save_every: int = 0
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise EmkitError("num_generations must be >= 2 (GRPO compares answers within a group)")
        if self.batch_size % self.num_generations:
            raise EmkitError(
                f"batch_size ({self.batch_size}) must be a multiple of num_generations ({self.num_generations})"
            )
        if self.max_steps < 1 or self.lr <= 0:
            raise EmkitError("max_steps must be >= 1 and lr > 0")


@dataclass
class RealignConfig:
    """Continue SFT of a misaligned model on ``n_samples`` benign rows, evaluating every ``eval_every``.

    The paper's setting: batch 4, ~35 steps, a few hundred samples. ``samples`` answers per question
    paraphrase at each evaluation; ``label`` names the curve (default: the fine-tuned model's name).
    """

    sft: SFTConfig = field(
        default_factory=lambda: SFTConfig(name="realigned", batch_size=4, max_steps=35, lr=1e-4, warmup_steps=0)
    )
    n_samples: int = 140
    eval_every: int = 5
    samples: int = 1
    label: str = ""

    def __post_init__(self) -> None:
        if self.n_samples < 1 or self.eval_every < 1 or self.samples < 1:
            raise EmkitError("n_samples, eval_every and samples must be >= 1")
