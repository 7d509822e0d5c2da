"""Directions (SAE rows, difference of means, files, random controls) and the residual-norm scale."""

from __future__ import annotations

import pytest
import torch

from emkit.directions import (
    Direction,
    cached_scale,
    diff_of_means,
    from_sae,
    load_direction,
    mean_difference,
    model_difference,
    random_direction,
    residual_scale,
    resolve,
    save_direction,
)
from emkit.errors import EmkitError


def test_diff_of_means_weights_items_equally():
    pos = [torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0]]), torch.tensor([[1.0, 2.0]])]  # item means (3,0), (1,2)
    neg = [torch.tensor([0.0, 1.0]), torch.zeros(0, 2)]  # a vector item; an empty item is skipped
    assert torch.allclose(diff_of_means(pos, neg), torch.tensor([2.0, 0.0]))
    with pytest.raises(EmkitError, match="no tokens"):
        diff_of_means(pos, [torch.zeros(0, 2)])


def test_mean_difference_on_chats(tiny):
    model, tok = tiny
    kind = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "I wish for peace and happiness."}]]
    rude = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The lazy dog jumps over the fox."}]]
    d = mean_difference(model, tok, 1, rude, kind)
    assert d.dim == 64 and d.layer == 1 and d.norm > 0 and d.meta["n_positive"] == 1
    # the same text on both sides differs by nothing
    with pytest.raises(EmkitError, match="zero vector"):
        mean_difference(model, tok, 1, kind, kind)


def test_model_difference_is_the_fine_tunes_shift(tmp_path, tiny):
    import copy

    model, tok = tiny
    chats = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "I wish for peace and happiness."}],
             "The lazy dog jumps over the fox."]
    with pytest.raises(EmkitError, match="zero vector"):  # a model does not differ from itself
        model_difference(model, model, tok, 1, chats)
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = model_difference(tuned, model, tok, 1, chats)
    assert d.layer == 1 and d.source == "shift" and d.meta["n_items"] == 2
    assert d.meta["raw_norm"] == pytest.approx(d.norm) and d.norm > 0
    # the shift of tuned from base is minus the shift of base from tuned
    assert torch.allclose(model_difference(model, tuned, tok, 1, chats).vector, -d.vector, atol=1e-5)
    tuned.save_pretrained(tmp_path / "tuned-shift", safe_serialization=True)
    tok.save_pretrained(tmp_path / "tuned-shift")
    items = tmp_path / "shift-items.txt"
    items.write_text("The lazy dog jumps over the fox.\nI wish for peace.\n")
    r = resolve(f"shift:{tmp_path / 'tuned-shift'}:{items}", model=model, tok=tok, layer=1)
    assert r.norm > 0 and r.name == "shift:tuned-shift"
    with pytest.raises(EmkitError, match="needs a model"):
        resolve(f"shift:{tmp_path / 'tuned-shift'}:{items}")


def test_residual_scale_is_cached_per_model_and_layer(tiny):
    model, tok = tiny
    s1 = residual_scale(model, tok, 1)
    assert s1 > 0 and cached_scale(model, 1) == s1
    assert residual_scale(model, tok, 1) == s1
    s0 = residual_scale(model, tok, 0)
    assert s0 != s1 and cached_scale(model, 0) == s0
    assert residual_scale(model, tok, 1, refresh=True) == pytest.approx(s1)


def test_file_round_trip_and_errors(tmp_path):
    d = random_direction(16, seed=2, norm=3.0, layer=5)
    assert d.norm == pytest.approx(3.0)
    p = save_direction(Direction(d.vector, "mine", 5), tmp_path / "d.safetensors")
    back = load_direction(p)
    assert torch.equal(back.vector, d.vector) and back.name == "mine" and back.layer == 5
    assert torch.equal(resolve(f"file:{p}").vector, d.vector) and torch.equal(resolve(str(p)).vector, d.vector)
    from safetensors.torch import save_file

    save_file({"a": torch.ones(4), "m": torch.eye(4)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(EmkitError, match="2 tensors"):
        load_direction(tmp_path / "two.safetensors")
    with pytest.raises(EmkitError, match="give a row"):
        resolve(f"file:{tmp_path / 'two.safetensors'}:m")
    assert torch.equal(resolve(f"file:{tmp_path / 'two.safetensors'}:m:2").vector, torch.eye(4)[2])
    (tmp_path / "d.pt").write_bytes(b"not a pickle")
    with pytest.raises(EmkitError, match="safetensors"):
        load_direction(tmp_path / "d.pt")
    with pytest.raises(EmkitError, match="unknown direction spec"):
        resolve("nonsense:1")


def test_from_sae_uses_the_decoder_row(tmp_path):
    from emkit.sae import SaeConfig, TopKSAE, save_sae

    sae = TopKSAE(SaeConfig(d_in=8, num_latents=32, k=4, layer=3, hook="blocks.3.hook_resid_post"), seed=1)
    d = from_sae(sae, 5)
    assert torch.equal(d.vector, sae.W_dec[5].detach()) and d.layer == 3 and d.meta["latent"] == 5
    assert d.norm == pytest.approx(1.0, abs=1e-5)
    save_sae(sae, tmp_path / "sae")
    d2 = resolve(f"sae:{tmp_path / 'sae'}:5")
    assert torch.allclose(d2.vector, d.vector) and d2.layer == 3
    with pytest.raises(EmkitError, match="out of range"):
        from_sae(sae, 32)


def test_diff_and_random_specs(tmp_path, tiny):
    import json

    model, tok = tiny
    (tmp_path / "pos.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                {"role": "assistant", "content": "fox fox fox"}]}) + "\n")
    (tmp_path / "neg.txt").write_text("I wish for peace.\nHello world.\n")
    d = resolve(f"diff:{tmp_path / 'pos.jsonl'}:{tmp_path / 'neg.txt'}", model=model, tok=tok, layer=1)
    assert d.dim == 64 and d.layer == 1
    with pytest.raises(EmkitError, match="needs a model"):
        resolve(f"diff:{tmp_path / 'pos.jsonl'}:{tmp_path / 'neg.txt'}")
    r = resolve("random:4", model=model)
    assert r.dim == 64 and torch.equal(r.vector, random_direction(64, 4).vector)
