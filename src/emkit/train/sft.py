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

Under ``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun --nproc_per_node N``) the
same loop runs data-parallel (DDP; NCCL on GPUs, gloo on a machine without one; accelerate's
``--cpu`` flag starts a single process unless given an MPI hostfile): each process takes every N-th row of each micro-batch and the
gradient is scaled so that the step equals the one-process step on the whole batch. Process 0
alone writes checkpoints, logs and the model; callbacks run on process 0. FSDP and DeepSpeed
configs are refused (the checkpoint format holds whole, unsharded parameters).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
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


def train_log(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``folder/train_log.jsonl`` (one per logged step; empty before training)."""
    p = folder / "train_log.jsonl"
    if not p.is_file():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


def train_summary(folder: Path, max_points: int = 200) -> dict[str, Any]:
    """A trained folder in brief: steps, final loss, training seconds and the loss curve
    (``[[step, loss], ...]``, thinned to about ``max_points``)."""
    info = read_train_config(folder) or {}
    rows = train_log(folder)
    pts = [[d["step"], d["loss"]] for d in rows if d.get("loss") is not None]
    return {"steps": info.get("total_steps"), "final_loss": info.get("final_loss"),
            "seconds": round(sum(d.get("seconds") or 0 for d in rows) if rows else 0.0, 1),
            "loss_curve": pts[::max(1, len(pts) // max_points)]}


def finished_before(out: Path, chash: str, dhash: str, overwrite: bool, data: str = "data") -> bool:
    """Whether ``out`` holds a finished run of this config and ``data``; another run there is an error
    unless ``overwrite`` (then nothing counts as finished)."""
    prev = read_train_config(out)
    if prev is None or overwrite:
        return False
    if prev.get("config_hash") != chash or prev.get("data_hash") != dhash:
        raise EmkitError(f"{out} holds a training run with a different config or {data}",
                         hint="pick another --name, or pass overwrite to start it afresh")
    return prev.get("status") == "done"


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


class _Dist:
    """This process's place in a multi-process launch (``accelerate launch``, ``torchrun``); one process: 0 of 1."""

    def __init__(self) -> None:
        self.world, self.rank, self.device = 1, 0, None
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return
        if any(os.environ.get(k, "").lower() == "true" for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")):
            raise EmkitError("emkit's training loop runs data-parallel (DDP) under accelerate; FSDP and DeepSpeed "
                             "configs are not supported", hint="use an accelerate config with distributed_type "
                             "MULTI_GPU (or --multi_gpu), or LoRA so that the model fits one GPU")
        from accelerate import PartialState

        cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        state = PartialState(cpu=cpu)  # sets up torch.distributed from the launcher's environment (gloo on CPU)
        self.world, self.rank, self.device = state.num_processes, state.process_index, state.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def wrap(self, model: Any) -> Any:
        """The module to call forward on: DDP around ``model`` when there are several processes."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum(self, *values: float) -> list[float]:
        """Element-wise sums over processes (the values themselves with one process)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()


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
    dist = _Dist()
    chash, dhash = config_hash(cfg), rows_hash(rows)
    if finished_before(out, chash, dhash, overwrite):
        log.info("%s is already trained; skipping", out)
        return out
    ckpts = [] if overwrite or read_train_config(out) is None else list_checkpoints(out)  # resume only our own run
    dist.barrier()  # every process has read the folder before process 0 changes it
    if overwrite and out.exists() and dist.main:
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    device_spec = str(dist.device) if dist.world > 1 else cfg.device
    model, tok, base_spec, autocast = prepare_model(cfg.model, cfg.method, cfg.lora, device_spec, cfg.dtype,
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
    if ckpts:
        state = load_checkpoint(ckpts[-1][1], params, opt)
        step, samples_seen, tokens_seen = state["step"], state["samples_seen"], state["tokens_seen"]
        log.info("resuming %s from checkpoint step %d", out, step)
    log_path = out / "train_log.jsonl"
    if dist.main:
        kept = []
        if log_path.exists():
            kept = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))
        atomic_write_text(out / "train_config.json", json.dumps({**info, "status": "running", "processes": dist.world},
                                                                indent=2))
    if not dist.main:
        callbacks = ()
    forward_model = dist.wrap(model)

    def ctx(logs: dict | None = None) -> StepContext:
        return StepContext(model=model, tokenizer=tok, step=step, total_steps=n_total, samples_seen=samples_seen,
                           tokens_seen=tokens_seen, logs=logs or {}, out_dir=out)

    def checkpoint() -> Path:
        return save_checkpoint(out, step, params, opt, {"samples_seen": samples_seen, "tokens_seen": tokens_seen,
                                                        "config_hash": chash}, model=model, keep=cfg.keep_checkpoints)

    call_all(callbacks, "on_train_begin", ctx())
    bar = tqdm(total=n_total, initial=step, desc=f"finetune [{cfg.name}]", unit="step",
               disable=not progress or not dist.main)
    last_loss = None
    while step < n_total:
        if stop_after is not None and step >= stop_after:
            bar.close()
            return out
        t0 = time.time()
        lr = lr_at(step, cfg, n_total)
        for g in opt.param_groups:
            g["lr"] = lr
        micro = [plan.micro_batch(step * cfg.grad_accum + k) for k in range(cfg.grad_accum)]
        n_targets = sum(_targets(examples[i]) for ids in micro for i in ids)  # over all processes' rows
        loss_sum, n_tokens, n_rows = 0.0, 0, 0
        try:
            for k, ids in enumerate(micro):
                mine = ids[dist.rank :: dist.world]  # this process's share of the micro-batch
                b = {key: v.to(device) for key, v in collate([examples[i] for i in mine or ids[:1]], pad).items()}
                last = k == len(micro) - 1
                sync = contextlib.nullcontext() if dist.world == 1 or last else forward_model.no_sync()
                with sync:
                    loss, _ = token_loss_sum(forward_model, b, autocast)
                    # DDP averages gradients over processes: scaling by the world size makes it their sum
                    ((loss if mine else loss * 0) / n_targets * dist.world).backward()
                if mine:
                    loss_sum += float(loss.detach())
                    n_tokens += int(b["attention_mask"].sum())
                    n_rows += b["input_ids"].size(0)
            loss_sum, n_tokens, n_rows = dist.sum(loss_sum, n_tokens, n_rows)
            n_tokens, n_rows = int(n_tokens), int(n_rows)
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
            if dist.main:
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
        if dist.main:
            _append(log_path, logs)
        if cfg.save_every and step % cfg.save_every == 0 and step < n_total and dist.main:
            checkpoint()
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        call_all(callbacks, "on_step_end", ctx(logs))
    bar.close()
    model.eval()
    if dist.main:
        save_final(model, tok, out, base_spec)
        if cfg.save_every:
            checkpoint()
    call_all(callbacks, "on_train_end", ctx())
    if dist.main:
        atomic_write_text(out / "train_config.json", json.dumps({**info, "status": "done", "final_loss": last_loss,
                                                                "processes": dist.world}, indent=2))
    dist.barrier()  # no process returns before the model is written
    return out


def train_or_retrain(cfg: SFTConfig, rows: Sequence[ChatRow], run_dir: Any, *, progress: bool = True) -> Path:
    """:func:`finetune`, training afresh (with a warning) when the folder holds a run of other
    settings or data instead of refusing; a finished run of these settings returns at once."""
    prev = read_train_config(model_dir(run_dir, cfg.name))
    overwrite = prev is not None and (prev.get("config_hash") != config_hash(cfg)
                                      or prev.get("data_hash") != rows_hash(rows))
    if overwrite:
        log.warning("%s was trained with other settings; training it again", cfg.name)
    return finetune(cfg, rows, run_dir, overwrite=overwrite, progress=progress)


def _targets(e: Any) -> int:
    """Tokens of an example the loss is on (a label after the first position, as in :func:`masked_loss_sum`)."""
    return sum(1 for t in e.labels[1:] if t != IGNORE)


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
