"""Model loading, chat formatting, assistant masks and layer discovery on tiny models."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from emkit.errors import EmkitError
from emkit.models import assistant_mask, decoder_layers, final_norm, format_chat, hook_name, load_model
from emkit.models.layers import hidden_size, parse_hook_name
from emkit.models.load import resolve_device
from emkit.testing import make_tiny_model


def test_load_local_folder(tiny):
    model, tok = tiny
    assert model.config.num_hidden_layers == 2
    assert tok.pad_token is not None
    assert model.emkit_spec.endswith("model")


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(EmkitError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EmkitError, match="no weights"):
        load_model(tmp_path)


def test_pickle_weights_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(EmkitError, match="safetensors only"):
        load_model(tmp_path)


def test_unknown_spec():
    with pytest.raises(EmkitError, match="cannot find model"):
        load_model("not-a-model")


def test_device_auto_is_cpu_fp32_without_cuda():
    dev, dt = resolve_device("auto", "auto")
    if not torch.cuda.is_available():
        assert dev.type == "cpu" and dt == torch.float32
    with pytest.raises(EmkitError):
        resolve_device("cpu", "float8")


def test_assistant_mask_marks_only_assistant_tokens(tiny):
    _, tok = tiny
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ]
    ids, mask = assistant_mask(tok, msgs)
    assert len(ids) == len(mask) and sum(mask) > 0
    answer = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert answer.startswith("The capital of France is Paris.")
    assert "<|im_end|>" in answer  # the end-of-turn token is learned too
    prompt = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "hello world" in prompt and "Paris" not in prompt


def test_assistant_mask_multi_turn_and_truncation(tiny):
    _, tok = tiny
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "fine thank you"},
    ]
    ids, mask = assistant_mask(tok, msgs)
    text = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert "hello" in text and "fine thank you" in text and "how are you" not in text
    ids2, mask2 = assistant_mask(tok, msgs, max_length=5)
    assert len(ids2) == 5 and mask2 == mask[:5]


def test_fallback_chat_template(tmp_path):
    folder = make_tiny_model(tmp_path / "m", chat_template=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, tok = load_model(folder)
    assert any("fallback" in str(w.message) for w in caught)
    text = format_chat(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text.endswith("### Assistant:\n")


def test_hook_names():
    assert hook_name(7) == "blocks.7.hook_resid_post"
    assert parse_hook_name("blocks.12.hook_resid_post") == 12
    with pytest.raises(EmkitError):
        parse_hook_name("layer12")


@pytest.mark.parametrize(
    "model",
    [
        lambda: GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=50, n_positions=64)),
        lambda: Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=3, hidden_size=32, intermediate_size=64,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=50)),
    ],
    ids=["gpt2", "qwen2"],
)
def test_layers_found_by_structure(model):
    m = model()
    layers = decoder_layers(m)
    assert len(layers) == 3
    assert hidden_size(m) == 32
    assert final_norm(m) is not None


def test_gemma3_layers():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, vocab_size=50)
    m = Gemma3ForCausalLM(cfg)
    assert len(decoder_layers(m)) == 2


def test_peft_wrapped_layers(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert len(decoder_layers(peft_model)) == 2


def test_adapter_folder_loads_on_base(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded, tok = load_model(tmp_path / "adapter")
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, peft_model(x).logits, atol=1e-5)
    merged, _ = load_model(tiny_model_dir, adapter=tmp_path / "adapter", merge_adapter=True)
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, peft_model(x).logits, atol=1e-4)
