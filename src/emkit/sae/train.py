"""Train a top-k SAE on captured activations: streamed shards, Adam with warm-up, AuxK, resumable.

Per step: encode a shuffled batch, reconstruct, loss = FVU + ``auxk_alpha`` * AuxK (dead latents
learn to predict the residual, Gao et al. 2024), remove the decoder-norm-changing part of the
decoder gradient, Adam step, renormalise the decoder rows. A latent is *dead* when it has not fired
for ``dead_tokens`` training tokens. Logged (``metrics.jsonl``): FVU, L0, dead fraction, AuxK loss,
learning rate, tokens/s, and the held-out FVU (on the last ``holdout_tokens`` captured, never
trained on). A checkpoint (safetensors only) is written every ``checkpoint_every`` steps; running
again with the same settings resumes from it, and a finished run returns at once.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from emkit.activations import ActivationStore
from emkit.config import config_hash, to_dict
from emkit.errors import EmkitError, StaleFolderError
from emkit.run import atomic_write_text
from emkit.sae.config import SaeConfig
from emkit.sae.io import save_sae
from emkit.sae.model import TopKSAE, geometric_median, load_sae

SUMMARY = "train_summary.json"
METRICS = "metrics.jsonl"
CKPT = "checkpoint"


@dataclass
class SaeTrainConfig:
    """SAE size and optimisation settings. ``lr = 0`` picks ``2e-3 * sqrt(4096 / num_latents)`` (tuned for
    CPU-sized runs of a few hundred optimiser steps; long GPU runs may prefer a smaller rate).

    ``select_dtype`` is the precision in which the top k latents are chosen (values and gradients
    are fp32 either way); ``auto`` times both on the first batch and keeps the faster.
    """

    num_latents: int = field(default=4096, metadata={"help": "Number of SAE latents."})
    k: int = field(default=32, metadata={"help": "Active latents per token (top-k)."})
    batch_size: int = field(default=2048, metadata={"help": "Tokens per training step."})
    lr: float = field(default=0.0, metadata={"help": "Adam learning rate (0 = scaled to the number of latents)."})
    warmup_steps: int = field(default=50, metadata={"help": "Steps of linear learning-rate warm-up."})
    decay_frac: float = field(default=0.2, metadata={"help": "Last fraction of the steps, decaying the rate to 0."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the captured tokens."})
    auxk_alpha: float = field(default=1 / 32, metadata={"help": "Weight of the AuxK loss in the total loss."})
    k_aux: int = field(default=0, metadata={"help": "Dead latents AuxK uses at most (0: half the input width)."})
    dead_tokens: int = field(default=250_000, metadata={"help": "Training tokens without firing that make a latent dead."})
    holdout_tokens: int = field(default=16_384, metadata={"help": "Captured tokens held out for the held-out FVU."})
    init_b_dec: Literal["median", "mean", "zero"] = field(default="median", metadata={
        "help": "Decoder bias start: geometric median, mean or zero of a sample of activations."})
    select_dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "Precision of the top-k choice; auto times both on the first batch."})
    buffer_shards: int = field(default=4, metadata={"help": "Activation shards shuffled together."})
    log_every: int = field(default=20, metadata={"help": "Log to metrics.jsonl every N steps."})
    eval_every: int = field(default=100, metadata={"help": "Held-out FVU every N steps (at a logged step)."})
    checkpoint_every: int = field(default=100, metadata={"help": "Resumable checkpoint every N steps."})
    seed: int = field(default=0, metadata={"help": "Random seed."})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs <= 0 or self.num_latents < 1 or self.k < 1:
            raise EmkitError("batch_size, epochs, num_latents and k must be positive")
        if not 0 <= self.decay_frac < 1:
            raise EmkitError(f"decay_frac must be in [0, 1), got {self.decay_frac}")

    def resolved_lr(self) -> float:
        return self.lr or 2e-3 * math.sqrt(4096 / self.num_latents)


@dataclass
class TrainResult:
    sae: TopKSAE
    summary: dict[str, Any]


def _lr_factor(step: int, total: int, warmup: int, decay_frac: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    decay_start = int(total * (1 - decay_frac))
    if decay_frac and step >= decay_start:
        return max(0.0, (total - step) / max(1, total - decay_start))
    return 1.0


@torch.no_grad()
def evaluate(sae: TopKSAE, x: torch.Tensor, batch_size: int = 8192) -> dict[str, float]:
    """FVU (against ``x``'s own mean), mean L0, and the fraction of latents that never fired on ``x``."""
    if len(x) == 0:
        return {"fvu": float("nan"), "l0": 0.0, "never_fired": float("nan")}
    err = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.num_latents, dtype=torch.bool)
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size]
        idx, vals = sae.encode(xb)
        err += float((xb - sae.decode(idx, vals)).pow(2).sum())
        l0 += float((vals > 0).sum())
        fired[idx[vals > 0]] = True
    var = float((x - x.mean(0)).pow(2).sum())
    return {"fvu": err / max(var, 1e-12), "l0": l0 / len(x), "never_fired": 1.0 - float(fired.float().mean())}


def heldout_split(sae: TopKSAE, held: torch.Tensor, chat: torch.Tensor | None) -> dict[str, Any]:
    """Held-out FVU and token count separately on chat tokens and prose tokens (empty without a chat flag)."""
    if chat is None or len(chat) != len(held):
        return {}
    out: dict[str, Any] = {}
    for name, mask in (("chat", chat.bool()), ("prose", ~chat.bool())):
        out[f"heldout_fvu_{name}"] = evaluate(sae, held[mask])["fvu"] if bool(mask.any()) else None
        out[f"heldout_tokens_{name}"] = int(mask.sum())
    return out


def pick_select_dtype(sae: TopKSAE, x: torch.Tensor, choice: str = "auto") -> torch.dtype | None:
    """``None`` (the parameters' precision) or bfloat16; ``auto`` times the encoder product both ways."""
    if choice == "float32":
        return None
    if choice == "bfloat16":
        return torch.bfloat16
    w, b = sae.encoder.weight.detach(), sae.encoder.bias.detach()

    def best_of(dtype: torch.dtype) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x.to(dtype), w.to(dtype), b.to(dtype))
            times.append(time.perf_counter() - t0)
        return min(times)

    try:
        fast = best_of(torch.bfloat16) < 0.8 * best_of(torch.float32)
    except RuntimeError:  # no bfloat16 matmul on this device
        return None
    return torch.bfloat16 if fast else None


def train_step(sae: TopKSAE, opt: torch.optim.Optimizer, x: torch.Tensor, since_fired: torch.Tensor, *,
               lr: float, dead_tokens: int, auxk_alpha: float, k_aux: int,
               select_dtype: torch.dtype | None = None) -> tuple[float, float, float]:
    """One optimisation step on batch ``x``; updates ``since_fired`` in place. Returns (FVU, AuxK, L0)."""
    dead = since_fired > dead_tokens
    n_dead = int(dead.sum())
    use_aux = auxk_alpha > 0 and n_dead > 0
    i, v, ai, av = sae.encode_with_aux(x, dead if use_aux else None, min(k_aux, n_dead) if use_aux else 0,
                                       select_dtype)
    e = x - sae.decode(i, v)
    total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    fvu = e.pow(2).sum() / total_var
    loss = fvu
    auxk = torch.zeros(())
    if use_aux:
        e_hat = sae.decode(ai, av, bias=False)
        auxk = min(n_dead / k_aux, 1.0) * (e_hat - e.detach()).pow(2).sum() / total_var
        loss = loss + auxk_alpha * auxk
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sae.project_decoder_grad()
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    sae.normalize_decoder()
    live = v > 0
    since_fired += len(x)
    since_fired[i[live].unique()] = 0
    return float(fvu.detach()), float(auxk.detach()), float(live.sum(1).float().mean())


def _save_ckpt(folder: Path, sae: TopKSAE, opt: torch.optim.Adam, since_fired: torch.Tensor,
               state: dict[str, Any]) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"sae.{k}": v.detach().contiguous() for k, v in sae.state_dict().items()}
    names = [n for n, _ in sae.named_parameters()]
    for n, p in zip(names, opt.param_groups[0]["params"], strict=True):
        st = opt.state.get(p, {})
        if "exp_avg" in st:
            tensors[f"adam.{n}.exp_avg"] = st["exp_avg"].contiguous()
            tensors[f"adam.{n}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
            state.setdefault("adam_steps", {})[n] = float(st["step"])
    tensors["since_fired"] = since_fired.contiguous()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_ckpt(folder: Path, sae: TopKSAE, opt: torch.optim.Adam) -> tuple[torch.Tensor, dict[str, Any]]:
    tensors = load_file(str(folder / "state.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    names = [n for n, _ in sae.named_parameters()]
    for n, p in zip(names, opt.param_groups[0]["params"], strict=True):
        if f"adam.{n}.exp_avg" in tensors:
            opt.state[p] = {"step": torch.tensor(state["adam_steps"][n]),
                            "exp_avg": tensors[f"adam.{n}.exp_avg"], "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"]}
    return tensors["since_fired"], state


def train_sae(acts: str | Path | ActivationStore, out_dir: str | Path, cfg: SaeTrainConfig | None = None, *,
              hook: str | None = None, layer: int | None = None, model: str | None = None,
              corpus: str | None = None, progress: bool = True, restart: bool = False,
              on_log: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train on the activations in ``acts`` and save the SAE folder to ``out_dir``; resumable.

    Provenance (hook, layer, model, corpus) defaults to the capture's index.
    """
    cfg = cfg or SaeTrainConfig()
    store = acts if isinstance(acts, ActivationStore) else ActivationStore(acts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    idx = store.index
    key = {"train": to_dict(cfg), "acts": {k: idx.get(k) for k in ("model", "layer", "n_tokens", "source", "dtype")}}
    h = config_hash(key)
    if (out / SUMMARY).is_file() and not restart:
        summary = json.loads((out / SUMMARY).read_text())
        if summary.get("config_hash") == h:
            return TrainResult(load_sae(out), summary)

    train_r, held_r = store.split(min(cfg.holdout_tokens, store.n_tokens // 5))
    n_train = sum(e - s for _, s, e in train_r)
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch < 1:
        raise EmkitError(f"only {n_train} training tokens for batches of {cfg.batch_size}",
                         hint="capture more tokens or lower --batch-size")
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scfg = SaeConfig(d_in=store.d_in, num_latents=cfg.num_latents, k=cfg.k,
                     hook=hook or idx.get("hook", ""), layer=idx.get("layer", -1) if layer is None else layer,
                     model=model or idx.get("model", ""), corpus=corpus or idx.get("source", ""),
                     meta={"train_tokens": total * cfg.batch_size, "config_hash": h})
    torch.manual_seed(cfg.seed)
    sae = TopKSAE(scfg, seed=cfg.seed)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.resolved_lr())
    ckpt = out / CKPT
    since_fired = torch.zeros(cfg.num_latents, dtype=torch.long)
    state: dict[str, Any] = {"step": 0, "config_hash": h, "seconds": 0.0, "heldout": []}
    if restart:
        shutil.rmtree(ckpt, ignore_errors=True)
        (out / METRICS).unlink(missing_ok=True)
    if (ckpt / "state.json").is_file():
        if json.loads((ckpt / "state.json").read_text()).get("config_hash") != h:
            raise StaleFolderError(f"{ckpt} is a checkpoint of a different training setup",
                             hint="use another --out folder, or --restart to discard it")
        since_fired, state = _load_ckpt(ckpt, sae, opt)
    else:
        (out / METRICS).unlink(missing_ok=True)
        sample = store.gather(train_r[:2])[:16384]
        with torch.no_grad():
            if cfg.init_b_dec == "median":
                sae.b_dec.copy_(geometric_median(sample))
            elif cfg.init_b_dec == "mean":
                sae.b_dec.copy_(sample.mean(0))
    held = store.gather(held_r)
    k_aux_max = cfg.k_aux or store.d_in // 2
    base_lr = cfg.resolved_lr()
    if "select_dtype" in state:  # keep the precision chosen before an interruption
        sel = torch.bfloat16 if state["select_dtype"] == "bfloat16" else None
    else:
        sel = pick_select_dtype(sae, store.gather(train_r[:1])[: cfg.batch_size], cfg.select_dtype)
        state["select_dtype"] = "bfloat16" if sel is not None else "float32"

    step = state["step"]
    bar = tqdm(total=total, initial=step, desc=f"SAE {cfg.num_latents}x k={cfg.k}", unit="step",
               disable=not progress)
    window: dict[str, float] = {"fvu": 0.0, "auxk": 0.0, "n": 0, "tokens": 0}
    t_window = time.perf_counter()
    t_start = time.perf_counter() - state["seconds"]
    metrics = (out / METRICS).open("a")
    last_eval: dict[str, float] = state["heldout"][-1] if state["heldout"] else {}
    try:
        while step < total:
            epoch, first = divmod(step, steps_per_epoch)
            for x in store.batches(train_r, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                   buffer_shards=cfg.buffer_shards, skip_batches=first):
                lr = base_lr * _lr_factor(step, total, cfg.warmup_steps, cfg.decay_frac)
                fvu, auxk, l0 = train_step(sae, opt, x, since_fired, lr=lr, dead_tokens=cfg.dead_tokens,
                                           auxk_alpha=cfg.auxk_alpha, k_aux=k_aux_max, select_dtype=sel)
                step += 1
                window["fvu"] += fvu
                window["auxk"] += auxk
                window["n"] += 1
                window["tokens"] += len(x)
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    dt = time.perf_counter() - t_window
                    rec = {"step": step, "tokens": step * cfg.batch_size, "fvu": window["fvu"] / window["n"],
                           "auxk": window["auxk"] / window["n"], "l0": l0,
                           "dead_frac": float((since_fired > cfg.dead_tokens).float().mean()),
                           "lr": lr, "tokens_per_s": window["tokens"] / max(dt, 1e-9)}
                    if step % cfg.eval_every == 0 or step == total:
                        last_eval = {"step": step, **evaluate(sae, held)}
                        state["heldout"].append(last_eval)
                        rec["heldout_fvu"] = last_eval["fvu"]
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                    if on_log is not None:
                        on_log(rec)
                    bar.set_postfix(fvu=f"{rec['fvu']:.3f}", dead=f"{rec['dead_frac']:.2f}",
                                    held=f"{last_eval.get('fvu', float('nan')):.3f}")
                    window = {"fvu": 0.0, "auxk": 0.0, "n": 0, "tokens": 0}
                    t_window = time.perf_counter()
                if step % cfg.checkpoint_every == 0 or step == total:
                    state.update(step=step, seconds=time.perf_counter() - t_start)
                    _save_ckpt(ckpt, sae, opt, since_fired, state)
                if step >= total:
                    break
    finally:
        metrics.close()
        bar.close()

    seconds = time.perf_counter() - t_start
    final_held = evaluate(sae, held)
    split = heldout_split(sae, held, store.gather_key(held_r, "chat"))
    recent = [json.loads(line) for line in (out / METRICS).read_text().splitlines()[-5:]]
    summary = {
        "config_hash": h, "config": to_dict(cfg), "lr": cfg.resolved_lr(), "steps": total,
        "train_tokens": total * cfg.batch_size, "unique_train_tokens": n_train, "heldout_tokens": len(held),
        "epochs": cfg.epochs, "select_dtype": state["select_dtype"], "train_fvu": sum(r["fvu"] for r in recent) / max(1, len(recent)),
        "heldout_fvu": final_held["fvu"], "heldout_l0": final_held["l0"],
        "heldout_never_fired": final_held["never_fired"], **split,
        "dead_frac": float((since_fired > cfg.dead_tokens).float().mean()),
        "seconds": round(seconds, 1), "tokens_per_s": round(total * cfg.batch_size / max(seconds, 1e-9), 1),
        "sae": {"d_in": scfg.d_in, "num_latents": scfg.num_latents, "k": scfg.k, "hook": scfg.hook,
                "layer": scfg.layer, "model": scfg.model, "corpus": scfg.corpus},
    }
    sae.replace_cfg(meta={**scfg.meta, "heldout_fvu": final_held["fvu"], "dead_frac": summary["dead_frac"]})
    save_sae(sae, out)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2))
    return TrainResult(sae.eval(), summary)
