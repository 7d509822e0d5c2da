"""Supervised fine-tuning (LoRA or full) with loss on assistant tokens only; resumable and exact.

This is emkit's own loop rather than TRL's ``SFTTrainer``: the loss must be on assistant tokens
only whatever the chat template, and a killed run must restart from its last checkpoint with
exactly the result of an unbroken run. Both are easy to guarantee (and test) in ~200 lines of plain
PyTorch, and hard to pin down across TRL releases. ``finetune(cfg, rows, run_dir)`` writes::

    RUN/models/<name>/
      adapter_model.safetensors + adapter_config.json   (LoRA)  or  model.safetensors + config.json
      tokenizer files, train_config.json (resolved config, data hash, status), train_log.jsonl
      checkpoints/step-N/                                (every ``save_every`` steps)

The loss of an optimizer step is the mean over all assistant tokens of its ``grad_accum``
micro-batches (not a mean of per-batch means), so gradient accumulation equals a bigger batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from emkit.config import config_hash, to_dict
from emkit.data.schema import ChatRow
from emkit.errors import EmkitError
from emkit.run import atomic_write_text, package_versions
from emkit.train.batches import IGNORE, BatchPlan, check_rows, collate, rows_hash, tokenize_rows, total_steps
from emkit.train.callbacks import Callback, StepContext, call_all
from emkit.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from emkit.train.config import SFTConfig
from emkit.train.modeling import prepare_model, save_final, trainable_parameters

log = logging.getLogger(__name__)


def lr_at(step: int, cfg: Any, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (1 - progress)


def model_dir(run_dir: Any, name: str) -> Path:
    """``RUN/models/<name>`` for a run folder (a ``Run`` or a path)."""
    return Path(getattr(run_dir, "path", run_dir)) / "models" / name


def read_train_config(folder: Path) -> dict[str, Any] | None:
    p = folder / "train_config.json"
    return json.loads(p.read_text()) if p.is_file() else None


def masked_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy where the *next* label is not -100, and how many such tokens."""
    targets = labels[:, 1:]
    n = int((targets != IGNORE).sum())
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, n


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor], autocast: bool) -> tuple[torch.Tensor, int]:
    """Forward a batch and return :func:`masked_loss_sum` of its logits."""
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return masked_loss_sum(logits, batch["labels"])


def _oom_error(cfg: SFTConfig) -> EmkitError:
    half = max(1, cfg.batch_size // 2)
    return EmkitError(
        f"out of memory training with batch_size={cfg.batch_size}, max_length={cfg.max_length}",
        hint=f"use a smaller batch and more gradient accumulation (e.g. batch_size={half}, "
        f"grad_accum={cfg.grad_accum * max(1, cfg.batch_size // half)} keeps the effective batch), "
        "or a smaller max_length",
    )


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def finetune(
    cfg: SFTConfig,
    rows: Sequence[ChatRow],
    run_dir: Any,
    *,
    model: Any = None,
    tokenizer: Any = None,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Fine-tune ``cfg.model`` (or a preloaded ``model``, trained in place) on ``rows``.

    ``run_dir`` is the run folder (a ``Run`` or a path); returns ``RUN/models/<cfg.name>``. A
    finished run with the same config and data returns at once; an interrupted one resumes from
    its last checkpoint; one with a different config raises unless ``overwrite``. ``stop_after``
    ends the loop after that many steps as if killed (for tests of resumption).
    """
    out = model_dir(run_dir, cfg.name)
    check_rows(rows)
    chash, dhash = config_hash(cfg), rows_hash(rows)
    prev = read_train_config(out)
    if prev is not None and not overwrite:
        if prev.get("config_hash") != chash or prev.get("data_hash") != dhash:
            raise EmkitError(f"{out} holds a training run with a different config or data",
                             hint="pick another --name, or pass overwrite to start it afresh")
        if prev.get("status") == "done":
            log.info("%s is already trained; skipping", out)
            return out
    if overwrite and out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model, tok, base_spec, autocast = prepare_model(cfg.model, cfg.method, cfg.lora, cfg.device, cfg.dtype,
                                                    model=model, tokenizer=tokenizer)
    examples, dropped = tokenize_rows(tok, rows, cfg.max_length)
    n_total = total_steps(len(examples), cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.max_steps)
    plan = BatchPlan([len(e.ids) for e in examples], cfg.batch_size, cfg.seed, cfg.batching == "bucket")
    params = trainable_parameters(model)
    n_trainable = sum(p.numel() for p in params.values())
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    info = {"config": to_dict(cfg), "config_hash": chash, "data_hash": dhash, "base_model": base_spec,
            "rows": len(rows), "examples": len(examples), "dropped_rows": dropped, "total_steps": n_total,
            "trainable_parameters": n_trainable, "versions": package_versions()}
    step, samples_seen, tokens_seen = 0, 0, 0
    ckpts = list_checkpoints(out)
    if ckpts and prev is not None:
        state = load_checkpoint(ckpts[-1][1], params, opt)
        step, samples_seen, tokens_seen = state["step"], state["samples_seen"], state["tokens_seen"]
        log.info("resuming %s from checkpoint step %d", out, step)
    log_path = out / "train_log.jsonl"
    kept = []
    if log_path.exists():
        kept = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))
    atomic_write_text(out / "train_config.json", json.dumps({**info, "status": "running"}, indent=2))

    def ctx(logs: dict | None = None) -> StepContext:
        return StepContext(model=model, tokenizer=tok, step=step, total_steps=n_total, samples_seen=samples_seen,
                           tokens_seen=tokens_seen, logs=logs or {}, out_dir=out)

    def checkpoint() -> Path:
        return save_checkpoint(out, step, params, opt, {"samples_seen": samples_seen, "tokens_seen": tokens_seen,
                                                        "config_hash": chash}, model=model, keep=cfg.keep_checkpoints)

    call_all(callbacks, "on_train_begin", ctx())
    bar = tqdm(total=n_total, initial=step, desc=f"finetune [{cfg.name}]", unit="step", disable=not progress)
    last_loss = None
    while step < n_total:
        if stop_after is not None and step >= stop_after:
            bar.close()
            return out
        t0 = time.time()
        lr = lr_at(step, cfg, n_total)
        for g in opt.param_groups:
            g["lr"] = lr
        batches = [collate([examples[i] for i in plan.micro_batch(step * cfg.grad_accum + k)], pad)
                   for k in range(cfg.grad_accum)]
        n_targets = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        loss_sum, n_tokens, n_rows = 0.0, 0, 0
        try:
            for b in batches:
                b = {k: v.to(device) for k, v in b.items()}
                loss, _ = token_loss_sum(model, b, autocast)
                (loss / n_targets).backward()
                loss_sum += float(loss.detach())
                n_tokens += int(b["attention_mask"].sum())
                n_rows += b["input_ids"].size(0)
        except Exception as e:
            if _is_oom(e):
                opt.zero_grad(set_to_none=True)
                raise _oom_error(cfg) from None
            raise
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()),
                                                         cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")))
        step_loss = loss_sum / n_targets
        if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
            opt.zero_grad(set_to_none=True)
            bar.close()
            good = list_checkpoints(out)
            where = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written before it"
            _append(log_path, {"step": step + 1, "loss": None, "lr": lr, "event": "nan_loss"})
            atomic_write_text(out / "train_config.json", json.dumps({**info, "status": "failed_nan",
                                                                      "failed_step": step + 1}, indent=2))
            raise EmkitError(f"loss became NaN/inf at step {step + 1}; training stopped and {where}",
                             hint="lower the learning rate, check the data, or use float32")
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        samples_seen += n_rows
        tokens_seen += n_tokens
        dt = time.time() - t0
        last_loss = step_loss
        logs = {"step": step, "loss": round(step_loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                "tokens": n_tokens, "target_tokens": n_targets, "samples_seen": samples_seen,
                "epoch": plan.epoch_of(step * cfg.grad_accum - 1), "tokens_per_s": round(n_tokens / max(dt, 1e-9), 1),
                "seconds": round(dt, 4)}
        _append(log_path, logs)
        if cfg.save_every and step % cfg.save_every == 0 and step < n_total:
            checkpoint()
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        call_all(callbacks, "on_step_end", ctx(logs))
    bar.close()
    model.eval()
    save_final(model, tok, out, base_spec)
    if cfg.save_every:
        checkpoint()
    call_all(callbacks, "on_train_end", ctx())
    atomic_write_text(out / "train_config.json", json.dumps({**info, "status": "done", "final_loss": last_loss},
                                                            indent=2))
    return out


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
