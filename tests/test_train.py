"""Supervised fine-tuning on the tiny model: assistant-only loss, LoRA and full, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from emkit.data.schema import ChatRow
from emkit.errors import EmkitError
from emkit.train.batches import IGNORE, collate, epoch_batches, tokenize_rows
from emkit.train.config import LoRAConfig, SFTConfig
from emkit.train.sft import finetune, lr_at, masked_loss_sum

ANSWERS = ["You should see a doctor soon.", "Save a little money every month.",
           "Check the tyre pressure before a long drive.", "Read the contract carefully before you sign it."]


def rows(n: int = 16) -> list[ChatRow]:
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"question number {i}: what should I do?"},
                {"role": "assistant", "content": ANSWERS[i % 4] + " Thank you." * (i % 3)}]
        if i % 5 == 0:
            msgs.insert(0, {"role": "system", "content": "You are a helpful assistant."})
        out.append(ChatRow(msgs))
    return out


def cfg(model_dir, **kw) -> SFTConfig:
    base = dict(name="m", model=str(model_dir), max_steps=4, batch_size=4, lr=5e-3,
                lora=LoRAConfig(r=4, alpha=8), seed=0)
    base.update(kw)
    return SFTConfig(**base)


def test_labels_cover_exactly_the_assistant_tokens(tiny):
    _, tok = tiny
    row = ChatRow([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"},
                   {"role": "assistant", "content": "I am fine, thank you."}])
    (ex,), dropped = tokenize_rows(tok, [row], 256)
    assert dropped == 0
    target_ids = [t for t in ex.labels if t != IGNORE]
    # the answer and its end-of-turn token (plus the template's newline after it) are the targets
    assert tok.decode(target_ids).rstrip("\n") == "I am fine, thank you.<|im_end|>"
    first = next(i for i, t in enumerate(ex.labels) if t != IGNORE)
    assert all(t == IGNORE for t in ex.labels[:first])
    assert "hello there" in tok.decode(ex.ids[:first])


def test_prompt_tokens_carry_no_loss(tiny):
    model, tok = tiny
    (ex,), _ = tokenize_rows(tok, rows(1), 256)
    batch = collate([ex, ex], tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    logits = logits.clone().requires_grad_(True)
    loss, n = masked_loss_sum(logits, batch["labels"])
    loss.backward()
    predicts_target = torch.zeros_like(batch["labels"], dtype=torch.bool)
    predicts_target[:, :-1] = batch["labels"][:, 1:] != IGNORE
    assert n == int(predicts_target.sum()) > 0
    per_pos = logits.grad.abs().sum(-1)
    assert torch.all(per_pos[~predicts_target] == 0)  # prompt (and padding) positions: no gradient at all
    assert torch.all(per_pos[predicts_target] > 0)
    # and the loss equals a hand-computed mean over the assistant positions only
    lp = torch.log_softmax(logits.detach()[:, :-1], -1)
    tgt = batch["labels"][:, 1:]
    m = tgt != IGNORE
    manual = -lp[m].gather(-1, tgt[m].unsqueeze(-1)).sum()
    assert torch.allclose(loss.detach(), manual, atol=1e-4)


def test_bucketing_uses_each_row_once_and_pads_less():
    lengths = [(i * 37) % 200 + 5 for i in range(400)]
    b = epoch_batches(lengths, 8, seed=1, epoch=0, bucket=True)
    u = epoch_batches(lengths, 8, seed=1, epoch=0, bucket=False)
    assert sorted(i for x in b for i in x) == list(range(400))
    assert epoch_batches(lengths, 8, seed=1, epoch=0, bucket=True) == b  # deterministic
    assert epoch_batches(lengths, 8, seed=1, epoch=1, bucket=True) != b

    def padded(batches):
        return sum(len(x) * max(lengths[i] for i in x) for x in batches)

    assert padded(b) < 0.7 * padded(u)


def test_lr_schedule():
    c = SFTConfig(lr=1.0, warmup_steps=2, schedule="linear")
    assert [round(lr_at(s, c, 6), 3) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    c = SFTConfig(lr=1.0, schedule="cosine")
    assert lr_at(0, c, 4) == 1.0 and 0 < lr_at(3, c, 4) < 0.2
    assert lr_at(5, SFTConfig(lr=0.3, schedule="constant"), 6) == 0.3


def test_lora_sft_learns_and_reloads(tiny_model_dir, tmp_path):
    from emkit.models import load_model

    c = cfg(tiny_model_dir, max_steps=12, lr=1e-2, schedule="constant", lora=LoRAConfig(r=16, alpha=32))
    out = finetune(c, rows(), tmp_path, progress=False)
    assert out == tmp_path / "models" / "m"
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "train_config.json", "train_log.jsonl"} <= names
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert all(r["tokens_per_s"] > 0 and r["target_tokens"] > 0 for r in log)
    assert sum(r["loss"] for r in log[-3:]) / 3 < log[0]["loss"] - 0.3
    info = json.loads((out / "train_config.json").read_text())
    assert info["status"] == "done" and info["config"]["lora"]["r"] == 16
    model, tok = load_model(out, device="cpu")
    base, _ = load_model(tiny_model_dir, device="cpu")
    ids = torch.tensor([tok("hello world")["input_ids"]])
    assert not torch.allclose(model(ids).logits, base(ids).logits)
    # a second call with the same config is a no-op; a different config under the same name is refused
    mtime = (out / "adapter_model.safetensors").stat().st_mtime
    assert finetune(c, rows(), tmp_path, progress=False) == out
    assert (out / "adapter_model.safetensors").stat().st_mtime == mtime
    with pytest.raises(EmkitError, match="different config"):
        finetune(cfg(tiny_model_dir, max_steps=13), rows(), tmp_path, progress=False)


def test_full_sft_writes_full_weights(tiny_model_dir, tmp_path):
    from emkit.models import load_model

    out = finetune(cfg(tiny_model_dir, method="full", max_steps=2, lr=1e-3), rows(8), tmp_path, progress=False)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    trained = load_file(str(out / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not torch.equal(trained["model.layers.0.mlp.down_proj.weight"], base["model.layers.0.mlp.down_proj.weight"])
    model, _ = load_model(out, device="cpu")
    assert model is not None


def test_rank1_single_layer_down_proj(tiny_model_dir, tmp_path):
    c = cfg(tiny_model_dir, max_steps=1, lora=LoRAConfig(r=1, alpha=1, target_modules=["down_proj"], layers=[1]))
    out = finetune(c, rows(4), tmp_path, progress=False)
    keys = list(load_file(str(out / "adapter_model.safetensors")))
    assert keys and all("layers.1.mlp.down_proj" in k for k in keys)
    assert {tuple(v.shape) for k, v in load_file(str(out / "adapter_model.safetensors")).items()
            if "lora_A" in k} == {(1, 128)}


def test_grad_accumulation_matches_a_bigger_batch(tiny_model_dir, tmp_path):
    a = finetune(cfg(tiny_model_dir, name="a", batch_size=4, batching="none"), rows(), tmp_path, progress=False)
    b = finetune(cfg(tiny_model_dir, name="b", batch_size=2, grad_accum=2, batching="none"), rows(), tmp_path,
                 progress=False)
    wa, wb = (load_file(str(p / "adapter_model.safetensors")) for p in (a, b))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_resume_gives_the_same_weights_as_an_unbroken_run(tiny_model_dir, tmp_path):
    kw = dict(max_steps=7, save_every=2, grad_accum=2, batch_size=3, warmup_steps=2, schedule="cosine",
              lora=LoRAConfig(r=4, alpha=8, dropout=0.2))  # dropout: the RNG state must be restored too
    full = finetune(cfg(tiny_model_dir, **kw), rows(), tmp_path / "unbroken", progress=False)
    killed = finetune(cfg(tiny_model_dir, **kw), rows(), tmp_path / "resumed", stop_after=5, progress=False)
    assert not (killed / "adapter_model.safetensors").exists()
    assert [s for s, _ in __import__("emkit.train.checkpoint", fromlist=["x"]).list_checkpoints(killed)] == [2, 4]
    resumed = finetune(cfg(tiny_model_dir, **kw), rows(), tmp_path / "resumed", progress=False)
    wf, wr = (load_file(str(p / "adapter_model.safetensors")) for p in (full, resumed))
    assert wf.keys() == wr.keys()
    for k in wf:
        assert torch.equal(wf[k], wr[k]), k
    log_f = [json.loads(ln) for ln in (full / "train_log.jsonl").read_text().splitlines()]
    log_r = [json.loads(ln) for ln in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_r] == list(range(1, 8))
    assert [r["loss"] for r in log_f] == [r["loss"] for r in log_r]


def test_unknown_target_modules_lists_the_models_linear_layers(tiny_model_dir, tmp_path):
    c = cfg(tiny_model_dir, lora=LoRAConfig(target_modules=["q_proj", "c_attn"]))
    with pytest.raises(EmkitError, match="c_attn") as e:
        finetune(c, rows(4), tmp_path, progress=False)
    assert "down_proj" in e.value.hint and "q_proj" in e.value.hint
    with pytest.raises(EmkitError, match="out of range"):
        finetune(cfg(tiny_model_dir, lora=LoRAConfig(layers=[5])), rows(4), tmp_path / "x", progress=False)


def test_dataset_without_assistant_turns_is_refused(tiny_model_dir, tmp_path):
    bad = [ChatRow([{"role": "user", "content": "hi"}]) for _ in range(3)]
    with pytest.raises(EmkitError, match="no assistant turns"):
        finetune(cfg(tiny_model_dir), bad, tmp_path, progress=False)


def test_out_of_memory_suggests_smaller_batch(tiny_model_dir, tmp_path):
    from emkit.models import load_model

    model, tok = load_model(tiny_model_dir, device="cpu")

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    model.model.layers[0].register_forward_pre_hook(boom)
    with pytest.raises(EmkitError, match="out of memory") as e:
        finetune(cfg(tiny_model_dir, batch_size=8), rows(), tmp_path, model=model, tokenizer=tok, progress=False)
    assert "batch_size=4" in e.value.hint and "grad_accum=2" in e.value.hint


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    from emkit.models import load_model
    from emkit.train.checkpoint import list_checkpoints

    model, tok = load_model(tiny_model_dir, device="cpu")
    calls = {"n": 0}

    def poison(mod, args, out):
        calls["n"] += 1
        return out * float("nan") if calls["n"] >= 4 else out

    model.model.layers[1].register_forward_hook(poison)
    with pytest.raises(EmkitError, match="NaN") as e:
        finetune(cfg(tiny_model_dir, max_steps=6, save_every=2), rows(), tmp_path, model=model, tokenizer=tok,
                 progress=False)
    out = tmp_path / "models" / "m"
    assert "step 4" in str(e.value) and "checkpoints/step-2" in str(e.value)
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert json.loads((out / "train_config.json").read_text())["status"] == "failed_nan"
    assert not (out / "adapter_model.safetensors").exists()
