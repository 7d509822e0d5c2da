#!/usr/bin/env bash
# GPU check: the CUDA code paths of emkit on a random-weight model of the bundled model's shape
# (SmolLM2-135M: 30 layers, width 576, vocabulary 49152), each throughput printed beside the limit
# that the device's measured bf16 matmul rate puts on it.
#
#   scripts/gpu_check.sh            # on a machine with a CUDA GPU (about a minute)
#   scripts/gpu_check.sh --cpu      # the same steps, tiny sizes, on the CPU (checks the script only)
#
# Steps: bf16 load (load_model with dtype auto), sampling (emkit.generate), residual capture
# (emkit.activations.run_to_layer), one top-k SAE step (emkit.sae), one LoRA step (emkit.train).
# "% of limit" = measured rate / (matmul FLOP/s / FLOPs per token); decoding is bound by memory
# bandwidth, not matmuls, so its share is small by nature. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" - "$@" <<'EOF'
import sys
import tempfile
import time
from pathlib import Path

import torch

cpu = "--cpu" in sys.argv[1:]
if not cpu and not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); use --cpu to test the script")
dev = torch.device("cpu" if cpu else "cuda")
small = cpu


def sync() -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    fn()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat


name = "CPU" if cpu else torch.cuda.get_device_name(0)
print(f"device: {name}; torch {torch.__version__}" + ("" if cpu else f", CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"))

# ---- matmul limit: the best of a few square bf16 matmuls (fp32 on the CPU)
mm_dtype = torch.float32 if cpu else torch.bfloat16
n = 1024 if small else 8192
a, b = torch.randn(n, n, device=dev, dtype=mm_dtype), torch.randn(n, n, device=dev, dtype=mm_dtype)
flops = max(2 * n**3 / timed(lambda: a @ b, repeat=3 if small else 20) for _ in range(3))
del a, b
print(f"matmul limit: {flops / 1e12:.2f} TFLOP/s ({str(mm_dtype).removeprefix('torch.')}, {n}x{n}; the best of 3)")


def report(step: str, rate: float, unit: str, flops_per_unit: float) -> None:
    limit = flops / flops_per_unit
    print(f"{step:<34} {rate:>12,.0f} {unit:<9} limit {limit:>14,.0f} {unit:<9} ({100 * rate / limit:5.1f}% of limit)")


# ---- a random model of the bundled model's shape, saved and loaded the way users load models
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from emkit.models import load_model  # noqa: E402
from emkit.testing import make_tokenizer  # noqa: E402

layers, width = (4, 576) if small else (30, 576)
cfg = LlamaConfig(vocab_size=49152, hidden_size=width, intermediate_size=1536, num_hidden_layers=layers,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
                  rope_theta=100000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2)
tmp = Path(tempfile.mkdtemp(prefix="emkit-gpu-check-"))
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(tmp, safe_serialization=True)
tok = make_tokenizer()
tok.save_pretrained(tmp)
t0 = time.perf_counter()
model, tok = load_model(tmp, device="cpu" if cpu else "auto", dtype="auto")
sync()
load_s = time.perf_counter() - t0
params = sum(p.numel() for p in model.parameters())
dtype = next(model.parameters()).dtype
print(f"load: {params / 1e6:.1f}M parameters on {next(model.parameters()).device} as {dtype} in {load_s:.1f}s")
if not cpu:
    assert dtype == torch.bfloat16, f"auto dtype on CUDA should be bfloat16, got {dtype}"

# ---- sampling (the hf back-end)
from emkit.generate import SamplingConfig, generate  # noqa: E402

batch, new = (8, 16) if small else (128, 128)
prompts = [f"Question {i}: what should I do about money and health?" for i in range(batch)]
scfg = SamplingConfig(temperature=1.0, max_new_tokens=new, batch_size=batch, seed=0)
out = []
gen_s = timed(lambda: out.append(generate(model, tok, prompts, scfg, progress=False)))
gen_tokens = sum(g.n_tokens for g in out[-1])
report(f"generate (batch {batch}, {new} new)", gen_tokens / gen_s, "tok/s", 2 * params)

# ---- residual capture at the middle layer
from emkit.activations import run_to_layer  # noqa: E402

seq, cap_batch = (64, 4) if small else (512, 32)
ids = torch.randint(3, 500, (cap_batch, seq))
layer = layers // 2
with torch.inference_mode():
    cap_s = timed(lambda: run_to_layer(model, layer, ids), repeat=2 if small else 10)
per_layer = (params - 49152 * width) / layers
report(f"capture (layer {layer}, {cap_batch}x{seq})", cap_batch * seq / cap_s, "tok/s",
       2 * per_layer * (layer + 1))

# ---- one top-k SAE training step
from emkit.sae.model import SaeConfig, TopKSAE  # noqa: E402
from emkit.sae.train import train_step  # noqa: E402

latents, k, sae_batch = (1024, 16, 1024) if small else (32768, 32, 8192)
sae = TopKSAE(SaeConfig(d_in=width, num_latents=latents, k=k)).to(dev)
opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
x = torch.randn(sae_batch, width, device=dev)
since = torch.zeros(latents, dtype=torch.long, device=dev)
sae_s = timed(lambda: train_step(sae, opt, x, since, lr=1e-4, dead_tokens=10**9, auxk_alpha=0.0, k_aux=0),
              repeat=3 if small else 20)
report(f"SAE step ({latents} latents, k={k})", sae_batch / sae_s, "tok/s", 6 * width * latents)

# ---- one LoRA step (bf16 weights on CUDA, loss on every token)
from emkit.train.config import LoRAConfig  # noqa: E402
from emkit.train.modeling import prepare_model  # noqa: E402
from emkit.train.sft import masked_loss_sum  # noqa: E402

del model
if dev.type == "cuda":
    torch.cuda.empty_cache()
lmodel, ltok, _, autocast = prepare_model(str(tmp), "lora", LoRAConfig(r=16, alpha=32), "cpu" if cpu else "auto",
                                          "auto")
lmodel.train()
trainable = [p for p in lmodel.parameters() if p.requires_grad]
lopt = torch.optim.AdamW(trainable, lr=1e-4)
lb, ls = (2, 64) if small else (16, 512)
lids = torch.randint(3, 500, (lb, ls), device=dev)


def lora_step() -> None:
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        logits = lmodel(input_ids=lids).logits
    loss, n_tok = masked_loss_sum(logits, lids)
    (loss / n_tok).backward()
    lopt.step()
    lopt.zero_grad(set_to_none=True)


lora_s = timed(lora_step, repeat=2 if small else 10)
report(f"LoRA step (r=16, {lb}x{ls})", lb * ls / lora_s, "tok/s", 6 * params)
if dev.type == "cuda":
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
print("gpu_check: all steps ran")
EOF
