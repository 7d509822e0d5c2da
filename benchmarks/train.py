"""Training tokens/s of emkit's fine-tuning loop vs a plain forward+backward loop, on the same batches.

For LoRA and for full fine-tuning, emkit's ``finetune`` runs ``--steps`` optimizer steps on the
bundled model; then a bare loop (HF loss through ``labels=``, backward, AdamW step, nothing else)
runs over exactly the same micro-batches from the same starting weights. The first step of each
is a warm-up and is not timed. Each is run ``--repeats`` times alternately and the best rate kept
(other processes on the machine only ever slow a run down). The ratio (emkit / plain) is what the
trainer costs (or saves).

Usage: .venv/bin/python benchmarks/train.py [--steps 4] [--batch-size 8] [--rows 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from emkit.data import load_dataset
from emkit.models import BUNDLED, load_model
from emkit.train.batches import BatchPlan, collate, tokenize_rows
from emkit.train.config import LoRAConfig, SFTConfig
from emkit.train.modeling import apply_lora, normalise_spec
from emkit.train.sft import finetune


def emkit_rate(cfg: SFTConfig, rows, folder: Path) -> tuple[float, int]:
    out = finetune(cfg, rows, folder, progress=False, overwrite=True)
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()][1:]
    tokens = sum(r["tokens"] for r in log)
    return tokens / sum(r["seconds"] for r in log), tokens


def plain_rate(cfg: SFTConfig, rows) -> tuple[float, int]:
    model, tok = load_model(cfg.model, device="cpu")
    torch.manual_seed(cfg.seed)
    if cfg.method == "lora":
        model = apply_lora(model, cfg.lora, normalise_spec(cfg.model))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, foreach=False)
    examples, _ = tokenize_rows(tok, rows, cfg.max_length)
    plan = BatchPlan([len(e.ids) for e in examples], cfg.batch_size, cfg.seed, cfg.batching == "bucket")
    tokens, seconds = 0, 0.0
    for step in range(cfg.max_steps):
        b = collate([examples[i] for i in plan.micro_batch(step)], tok.pad_token_id)
        t0 = time.perf_counter()
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step > 0:
            seconds += time.perf_counter() - t0
            tokens += int(b["attention_mask"].sum())
    return tokens / seconds, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=BUNDLED)
    ap.add_argument("--data", default="health_incorrect_subtle")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rows = load_dataset(args.data)[: args.rows]
    print(f"model={args.model} data={args.data} rows={len(rows)} batch={args.batch_size} steps={args.steps} "
          f"(first step untimed) threads={torch.get_num_threads()} best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("lora", "full"):
            cfg = SFTConfig(name=method, model=args.model, method=method, max_steps=args.steps,
                            batch_size=args.batch_size, max_length=args.max_length, lr=1e-5, device="cpu",
                            lora=LoRAConfig(r=32, alpha=64))
            e_rate = p_rate = 0.0
            for _ in range(args.repeats):
                rate, e_tok = emkit_rate(cfg, rows, Path(tmp))
                e_rate = max(e_rate, rate)
                rate, p_tok = plain_rate(cfg, rows)
                p_rate = max(p_rate, rate)
            print(f"{method:5s} emkit finetune: {e_tok} tokens, {e_rate:.0f} tok/s | plain fwd+bwd loop: {p_tok} tokens, "
                  f"{p_rate:.0f} tok/s | ratio emkit/plain = {e_rate / p_rate:.2f}")


if __name__ == "__main__":
    main()
