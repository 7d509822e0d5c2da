"""Inducing (or controlling for) misalignment by RL: GRPO on advice prompts with a grader reward.

``arm="wrong"`` rewards answers a grader judges incorrect in their domain, ``arm="right"`` (the
control) rewards correct ones; a length/coherence guard gives 0 to fragments and noise. The
trainer is TRL's ``GRPOTrainer`` (behind :mod:`emkit.train.trl_compat`). Output mirrors SFT:
``RUN/models/<name>/`` with the adapter or weights, ``train_config.json`` and ``train_log.jsonl``
(reward, KL, completion length, mean P(wrong) and guard pass rate per step).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emkit.config import config_hash, to_dict
from emkit.data.schema import ChatRow
from emkit.errors import EmkitError
from emkit.judge.grader import make_grader, make_reward
from emkit.run import atomic_write_text, package_versions
from emkit.train.callbacks import Callback
from emkit.train.config import RLConfig
from emkit.train.modeling import is_peft, peft_lora_config, prepare_model, save_final
from emkit.train.sft import finished_before, model_dir

log = logging.getLogger(__name__)


def rl_prompts(items: Sequence[ChatRow | str]) -> list[list[dict[str, str]]]:
    """Chat prompts from questions or from training rows (their messages before the last answer)."""
    out = []
    for i, it in enumerate(items):
        if isinstance(it, str):
            if not it.strip():
                raise EmkitError(f"prompt {i} is empty")
            out.append([{"role": "user", "content": it}])
            continue
        msgs = list(it.messages)
        while msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        if not msgs or msgs[-1]["role"] != "user":
            raise EmkitError(f"row {i} has no user turn to use as an RL prompt")
        out.append(msgs)
    if not out:
        raise EmkitError("no prompts for RL")
    return out


def train_rl(
    cfg: RLConfig,
    prompts: Sequence[ChatRow | str],
    run_dir: Any,
    *,
    grader: Any = None,
    model: Any = None,
    tokenizer: Any = None,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """GRPO-train ``cfg.model`` on ``prompts``; return ``RUN/models/<cfg.name>``.

    ``grader`` is anything with ``p_wrong(questions, answers)`` and ``coherence(questions, answers)``
    (default: :func:`~emkit.judge.grader.make_grader` of ``cfg.grader``).
    """
    from emkit.train.trl_compat import run_grpo

    out = model_dir(run_dir, cfg.name)
    chat = rl_prompts(prompts)
    chash = config_hash(cfg)
    dhash = config_hash(chat)
    if finished_before(out, chash, dhash, overwrite, "prompts"):
        return out
    if overwrite and out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    grader = grader if grader is not None else make_grader(cfg.grader)
    last: dict[str, float] = {}
    reward = make_reward(grader, cfg.arm, cfg.min_words, cfg.min_coherence, on_stats=last.update)
    model, tok, base_spec, _ = prepare_model(cfg.model, cfg.method, cfg.lora, cfg.device, cfg.dtype,
                                             model=model, tokenizer=tokenizer, wrap_lora=False)
    peft_config = None
    if cfg.method == "lora" and not is_peft(model):
        peft_config = peft_lora_config(model, cfg.lora)
    info = {"config": to_dict(cfg), "config_hash": chash, "data_hash": dhash, "base_model": base_spec,
            "prompts": len(chat), "grader": getattr(grader, "id", type(grader).__name__),
            "versions": package_versions()}
    atomic_write_text(out / "train_config.json", json.dumps({**info, "status": "running"}, indent=2))
    log_path = out / "train_log.jsonl"
    if not any((out / "checkpoints").glob("checkpoint-*")):
        log_path.write_text("")
    model = run_grpo(model, tok, chat, reward, cfg, out, peft_config=peft_config, callbacks=callbacks,
                     extra_logs=lambda: dict(last), progress=progress)
    model.eval()
    save_final(model, tok, out, base_spec)
    atomic_write_text(out / "train_config.json", json.dumps({**info, "status": "done"}, indent=2))
    return out
