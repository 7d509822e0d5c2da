"""Everything TRL-specific, in one place (TRL renames arguments between releases; pinned: trl==1.16.0).

emkit uses TRL only for GRPO. This module builds the ``GRPOConfig``/``GRPOTrainer`` from an
:class:`~emkit.train.config.RLConfig`, bridges TRL's logs into ``train_log.jsonl`` (reward, KL,
completion length per step) and calls emkit's own callbacks after each optimizer step.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emkit.errors import EmkitError
from emkit.train.callbacks import Callback, StepContext, call_all
from emkit.train.config import RLConfig

log = logging.getLogger(__name__)

TRL_VERSION = "1.16.0"

# TRL log key -> emkit train_log.jsonl key
LOG_KEYS = {
    "loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "reward": "reward",
    "reward_std": "reward_std", "kl": "kl", "entropy": "entropy", "completions/mean_length": "length",
    "completions/clipped_ratio": "clipped_ratio", "frac_reward_zero_std": "frac_reward_zero_std",
    "num_tokens": "tokens_seen",
}


def check_version() -> None:
    import trl

    if trl.__version__ != TRL_VERSION:
        log.warning("emkit was written against trl==%s; found %s (GRPO arguments may differ)",
                    TRL_VERSION, trl.__version__)


def grpo_args(cfg: RLConfig, output_dir: Path, use_cpu: bool, bf16: bool) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup",
        warmup_steps=cfg.warmup_steps,
        max_steps=cfg.max_steps,
        beta=cfg.beta,
        temperature=cfg.temperature,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        save_strategy="steps" if cfg.save_every else "no",
        save_steps=cfg.save_every or 500,
        save_total_limit=2,
        report_to="none",
        use_cpu=use_cpu,
        bf16=bf16,
        fp16=False,
        disable_tqdm=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_completions=False,
    )


class _Bridge:
    """A ``transformers.TrainerCallback`` forwarding logs and steps to emkit (built lazily)."""

    @staticmethod
    def make(log_path: Path, model: Any, tokenizer: Any, callbacks: Sequence[Callback], total: int,
             extra: Callable[[], dict[str, float]] | None, out_dir: Path, batch: int):
        from transformers import TrainerCallback

        class Bridge(TrainerCallback):
            nan_step: int | None = None

            def on_train_begin(self, args, state, control, **kw):
                call_all(callbacks, "on_train_begin", self._ctx(state, kw))

            def on_log(self, args, state, control, logs=None, **kw):
                if not logs or "train_runtime" in logs:
                    return
                row: dict[str, Any] = {"step": state.global_step}
                for k, v in logs.items():
                    if k in LOG_KEYS:
                        row[LOG_KEYS[k]] = v
                    elif k.startswith("rewards/"):
                        row[k] = v
                if extra is not None:
                    row.update(extra())
                loss = logs.get("loss")
                if isinstance(loss, float) and not math.isfinite(loss):
                    self.nan_step = state.global_step
                    control.should_training_stop = True
                    control.should_save = False
                with log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")

            def on_step_end(self, args, state, control, **kw):
                call_all(callbacks, "on_step_end", self._ctx(state, kw))

            def on_train_end(self, args, state, control, **kw):
                call_all(callbacks, "on_train_end", self._ctx(state, kw))

            def _ctx(self, state, kw) -> StepContext:
                return StepContext(model=kw.get("model") or model, tokenizer=tokenizer, step=state.global_step, total_steps=total,
                                   samples_seen=state.global_step * batch, out_dir=out_dir)

        return Bridge()


def run_grpo(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    reward_fn: Callable[..., list[float]],
    cfg: RLConfig,
    out_dir: Path,
    *,
    peft_config: Any = None,
    callbacks: Sequence[Callback] = (),
    extra_logs: Callable[[], dict[str, float]] | None = None,
    progress: bool = True,
) -> Any:
    """Train ``model`` (already on its device) with GRPO; return the trained model.

    ``peft_config`` makes TRL wrap a plain model in a fresh LoRA; a model that already holds an
    adapter continues it (TRL keeps a frozen copy as the KL reference).

    Checkpoints go to ``out_dir/checkpoints`` every ``cfg.save_every`` steps and a rerun resumes
    from the last one.
    """
    import torch
    from datasets import Dataset
    from trl import GRPOTrainer

    check_version()
    if not prompts:
        raise EmkitError("no prompts for RL")
    device = next(model.parameters()).device
    use_cpu = device.type == "cpu"
    bf16 = not use_cpu and next(model.parameters()).dtype == torch.bfloat16
    ckpt_dir = out_dir / "checkpoints"
    args = grpo_args(cfg, ckpt_dir, use_cpu, bf16)
    args.disable_tqdm = not progress
    tokenizer.padding_side = "left"
    data = Dataset.from_list([{"prompt": list(p)} for p in prompts])
    bridge = _Bridge.make(out_dir / "train_log.jsonl", model, tokenizer, callbacks, cfg.max_steps, extra_logs,
                          out_dir, cfg.batch_size // cfg.num_generations * cfg.grad_accum)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_fn], args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[bridge], peft_config=peft_config)
    resume = any(ckpt_dir.glob("checkpoint-*")) if ckpt_dir.is_dir() else False
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)
        if bridge.nan_step is not None:
            done = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
            where = f"the last good checkpoint is {done[-1]}" if done else "no checkpoint was written before it"
            raise EmkitError(f"GRPO loss became NaN/inf at step {bridge.nan_step}; training stopped and {where}",
                             hint="lower the learning rate or raise beta")
    except torch.OutOfMemoryError:
        raise EmkitError(
            f"out of memory in GRPO with batch_size={cfg.batch_size}, num_generations={cfg.num_generations}",
            hint="lower batch_size (a multiple of num_generations) and raise grad_accum, or lower "
            "max_completion_length",
        ) from None
    return trainer.model
