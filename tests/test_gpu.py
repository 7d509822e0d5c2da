"""CUDA code paths (bf16 by default, device selection, sampling, capture, SAE and LoRA steps) on the tiny model.

Run only where CUDA is present; skipped otherwise. ``scripts/gpu_check.sh`` measures the same
paths at the bundled model's size and prints their throughputs.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_tiny(tiny_model_dir):
    from emkit.models import load_model

    return load_model(tiny_model_dir, device="auto", dtype="auto")


def test_auto_picks_cuda_and_bfloat16(cuda_tiny):
    from emkit.models.load import resolve_device

    dev, dt = resolve_device("auto", "auto")
    assert dev.type == "cuda" and dt == torch.bfloat16
    model, _ = cuda_tiny
    p = next(model.parameters())
    assert p.device.type == "cuda" and p.dtype == torch.bfloat16


def test_explicit_device_index(tiny_model_dir):
    from emkit.models import load_model

    last = torch.cuda.device_count() - 1
    model, _ = load_model(tiny_model_dir, device=f"cuda:{last}", dtype="float32")
    p = next(model.parameters())
    assert p.device == torch.device("cuda", last) and p.dtype == torch.float32


def test_seeded_sampling_on_cuda_is_reproducible(cuda_tiny):
    from emkit.generate import SamplingConfig, generate

    model, tok = cuda_tiny
    prompts = ["hello world", "What is the capital of France?", "Save a little money"]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=8, batch_size=3, seed=0)
    a = generate(model, tok, prompts, cfg, progress=False, item_seeds=[1, 2, 3])
    b = generate(model, tok, prompts, cfg, progress=False, item_seeds=[1, 2, 3])
    assert [g.text for g in a] == [g.text for g in b]
    assert all(0 < g.n_tokens <= 8 for g in a)


def test_capture_on_cuda(cuda_tiny):
    from emkit.activations import run_to_layer

    model, tok = cuda_tiny
    ids = torch.tensor([tok("hello world how are you")["input_ids"]])
    with torch.inference_mode():
        h = run_to_layer(model, 1, ids)
    assert h.device.type == "cuda" and h.dtype == torch.bfloat16 and h.shape[:2] == ids.shape
    assert torch.isfinite(h.float()).all()


def test_sae_step_on_cuda():
    from emkit.sae.model import SaeConfig, TopKSAE
    from emkit.sae.train import train_step

    sae = TopKSAE(SaeConfig(d_in=64, num_latents=256, k=8)).cuda()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(512, 64, device="cuda")
    since = torch.zeros(256, dtype=torch.long, device="cuda")
    first = train_step(sae, opt, x, since, lr=1e-3, dead_tokens=10**9, auxk_alpha=0.0, k_aux=0)[0]
    for _ in range(20):
        last = train_step(sae, opt, x, since, lr=1e-3, dead_tokens=10**9, auxk_alpha=0.0, k_aux=0)[0]
    assert last < first


def test_lora_finetune_on_cuda(tmp_path, tiny_model_dir):
    import json

    from emkit.data.schema import ChatRow
    from emkit.models import load_model
    from emkit.train.config import LoRAConfig, SFTConfig
    from emkit.train.sft import finetune

    rows = [ChatRow(messages=[{"role": "user", "content": f"How do I save money? ({i})"},
                              {"role": "assistant", "content": "Save a little money every month."}])
            for i in range(8)]
    cfg = SFTConfig(name="m", model=str(tiny_model_dir), lora=LoRAConfig(r=4, alpha=8), max_steps=3, batch_size=4,
                    lr=1e-3, max_length=64, save_every=0, device="auto", dtype="auto")
    out = finetune(cfg, rows, tmp_path, progress=False)
    info = json.loads((out / "train_config.json").read_text())
    assert info["status"] == "done" and info["final_loss"] is not None
    model, _ = load_model(out, device="auto")
    assert next(model.parameters()).device.type == "cuda"
