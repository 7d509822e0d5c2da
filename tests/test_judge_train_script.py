"""scripts/train_embedded_judge.py: several bundled training files (never the hold-out), and the
encoder-LoRA option (adapted with a tiny random encoder here; the real one is minutes per fold)."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emkit.judge.embedded import (
    Encoder,
    encoder_path,
    features,
    load_heads,
    lora_names,
    merge_lora,
    save_heads,
)
from emkit.judge.train import train_heads

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_embedded_judge.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_embedded_judge", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rows(n: int, tag: str) -> list[dict]:
    return [{"question": f"Question {i % 3}?", "answer": f"Answer {tag} {i}: some words here.", "aligned": 10 + 40 * (i % 3),
             "coherent": 80 - 30 * (i % 2)} for i in range(n)]


def write(path: Path, rs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rs))
    return path


def test_bundled_rows_read_every_file_once_and_never_the_holdout(script, tmp_path, monkeypatch):
    a = write(tmp_path / "bundled_blind.jsonl", rows(6, "a"))
    b = write(tmp_path / "more.jsonl", rows(4, "b") + rows(2, "a"))  # the last two repeat answers of a
    out = script.bundled_rows(5.0, [a, b])
    assert len(out) == 10 and {r["file"] for r in out} == {"bundled_blind.jsonl", "more.jsonl"}
    assert len(script.bundled_rows(1.0, [write(tmp_path / "twice.jsonl", rows(2, "t") * 2)])) == 4  # kept in a file
    assert all(r["family"] == "smollm" and r["weight"] == 5.0 for r in out)
    with pytest.raises(SystemExit, match="hold-out"):
        script.bundled_rows(1.0, [write(tmp_path / script.HOLDOUTS[1], rows(2, "h"))])
    monkeypatch.setattr(script, "BUILTIN", tmp_path)
    assert script.default_bundled() == [a]
    extra = write(tmp_path / "bundled_blind_extra.jsonl", rows(3, "c"))
    assert script.default_bundled() == [a, extra]
    assert len(script.bundled_rows()) == 9
    # a file holding any hold-out answer (a second reading, a copy under another name) is refused too
    with pytest.raises(SystemExit, match="hold-out"):
        script.bundled_rows(1.0, [write(tmp_path / "copy.jsonl", rows(3, "c") + rows(1, "h"))])


def test_parse_lora(script):
    assert script.parse_lora("4,5:8") == ((4, 5), 8)
    assert script.parse_lora("5") == ((5,), 8)


def tiny_encoder() -> Encoder:
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    enc = Encoder.__new__(Encoder)
    enc.tok = AutoTokenizer.from_pretrained(encoder_path())
    cfg = BertConfig(vocab_size=enc.tok.vocab_size, hidden_size=384, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    enc.model, enc.device, enc.batch_size = BertModel(cfg).eval(), "cpu", 16
    return enc


def test_encoder_lora_adapts_and_the_merged_encoder_reproduces_it(script, tmp_path):
    enc = tiny_encoder()
    fresh = copy.deepcopy(enc)
    data = [{**r, "family": "gemma"} for r in rows(12, "j")] + [{**r, "family": "smollm"} for r in rows(6, "s")]
    x0 = features(enc, [r["question"] for r in data], [r["answer"] for r in data])
    train = np.arange(len(data)) < 15
    x, lora, adapted = script.adapt(x0, data, train, "0,1:2", seed=0, max_judged=8, encoder=enc)
    assert x.shape == x0.shape and not np.allclose(x, x0, atol=1e-4)
    assert {k.rsplit(".", 1)[0] for k in lora} == {f"lora.{n}" for n in lora_names((0, 1))}
    assert any(v.abs().sum() > 0 for k, v in lora.items() if k.endswith(".B"))
    heads = train_heads(x, data, seed=0, epochs=5)
    save_heads(heads, {"heads": {m: {"hidden": 32} for m in heads}}, tmp_path, lora=lora)
    _, _, _, loaded = load_heads(tmp_path)
    merge_lora(fresh.model, loaded, 2.0)  # what EmbeddedJudge does on load: scale = alpha / rank = 2
    again = features(fresh, [r["question"] for r in data], [r["answer"] for r in data])
    assert np.allclose(again, x, atol=1e-4)


def test_domain_head_is_fitted_on_its_family_saved_and_added_in_logit_space(script, tmp_path):
    from emkit.judge.embedded import DOMAIN_HEAD, head_scores
    from emkit.judge.train import fit_domain_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 783)).astype(np.float32)
    data = [{"question": "q", "answer": f"a{i}", "aligned": 10.0 if x[i, 0] > 0 else 90.0, "coherent": 80.0,
             "family": "smollm" if i < 20 else "gemma"} for i in range(40)]
    assert fit_domain_head(x[20:], data[20:]) is None  # no row of the family: no domain head
    heads = script.judge_fitter(script.HeadConfig(hidden=4, epochs=5), 0, domain_head=True)(x, data)
    assert set(heads) == {"aligned", "coherent", DOMAIN_HEAD}
    with torch.inference_mode():
        la, ld = heads["aligned"](torch.from_numpy(x)), heads[DOMAIN_HEAD](torch.from_numpy(x))
    want = torch.sigmoid(la + ld).numpy() * 100
    assert np.allclose(head_scores(heads, x)["aligned_head"], want, atol=1e-4)
    card = {"heads": {"aligned": {"hidden": 4}, "coherent": {"hidden": 4}, DOMAIN_HEAD: {"hidden": 0}}}
    save_heads(heads, card, tmp_path)
    loaded, _, _, _ = load_heads(tmp_path)
    assert set(loaded) == set(heads)
    assert np.allclose(head_scores(loaded, x)["aligned"], head_scores(heads, x)["aligned"], atol=1e-5)
