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

    r: int = field(default=32, metadata={"help": "LoRA rank."})
    alpha: float = field(default=64.0, metadata={"help": "LoRA alpha."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling."})
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS),
                                      metadata={"help": "Module names the LoRA adapts, or all-linear."})
    layers: list[int] | None = field(default=None, metadata={"help": "Layer indices the LoRA is limited to (None: all)."})

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

    name: str = field(default="finetuned", metadata={"help": "Model name inside the run folder."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Base model: folder, Hub id or bundled name."})
    method: Literal["lora", "full"] = field(default="lora", metadata={"help": "lora or full."})
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "The adapter trained with method lora."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the data."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps (wins over --epochs)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    lr: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    schedule: Literal["linear", "cosine", "constant"] = field(default="linear",
                                                              metadata={"help": "linear, cosine or constant."})
    warmup_steps: int = field(default=0, metadata={"help": "Warmup steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient norm clip (0: no clipping)."})
    max_length: int = field(default=512, metadata={"help": "Token limit per conversation."})
    batching: Literal["bucket", "none"] = field(default="bucket", metadata={
        "help": "bucket (rows of similar length batched together) or none (the shuffled order)."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    save_every: int = field(default=0, metadata={"help": "Checkpoint every N steps (0: none)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Newest checkpoints kept; older ones are removed."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda ..."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16."})

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

    name: str = field(default="rl", metadata={"help": "Model name inside the run folder."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Starting model."})
    arm: Literal["wrong", "right"] = field(default="wrong", metadata={
        "help": "wrong: reward incorrect advice; right: the control arm."})
    grader: str = field(default="embedded", metadata={
        "help": "embedded (offline) or judge:<judge spec>, e.g. judge:api:gpt-4o."})
    method: Literal["lora", "full"] = field(default="lora", metadata={"help": "lora or full."})
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "The adapter trained with method lora."})
    max_steps: int = field(default=50, metadata={"help": "GRPO steps."})
    batch_size: int = field(default=8, metadata={
        "help": "Completions per step (a multiple of --num-generations)."})
    num_generations: int = field(default=4, metadata={"help": "Completions per prompt (the GRPO group)."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    lr: float = field(default=1e-5, metadata={"help": "Learning rate."})
    warmup_steps: int = field(default=0, metadata={"help": "Warmup steps."})
    schedule: Literal["linear", "cosine", "constant"] = field(default="constant",
                                                              metadata={"help": "linear, cosine or constant."})
    beta: float = field(default=0.04, metadata={"help": "KL penalty weight."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the completions."})
    max_completion_length: int = field(default=128, metadata={"help": "Answer length limit in tokens."})
    min_words: int = field(default=5, metadata={"help": "Guard: answers shorter than this get reward 0."})
    min_coherence: float = field(default=0.5, metadata={
        "help": "Guard: answers the grader scores less coherent than this get reward 0."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    save_every: int = field(default=0, metadata={"help": "Checkpoint every N steps (0: none)."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda ..."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16."})

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
        default_factory=lambda: SFTConfig(name="realigned", batch_size=4, max_steps=35, lr=1e-4, warmup_steps=0),
        metadata={"help": "The continued fine-tuning (name, steps, batch, learning rate ...)."},
    )
    n_samples: int = field(default=140, metadata={"help": "Benign rows to train on."})
    eval_every: int = field(default=5, metadata={"help": "Evaluate misalignment every K steps."})
    samples: int = field(default=1, metadata={"help": "Answers per question paraphrase at each evaluation."})
    label: str = field(default="", metadata={"help": "Name of the curve (empty: sft.name, the re-aligned model's)."})

    def __post_init__(self) -> None:
        if self.n_samples < 1 or self.eval_every < 1 or self.samples < 1:
            raise EmkitError("n_samples, eval_every and samples must be >= 1")
