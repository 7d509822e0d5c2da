"""Top-k SAE: exact sparse gradients, learning known sparse directions, save/load (sparsify layout), resume."""

from __future__ import annotations

import json

import pytest
import torch

from emkit.activations import write_store
from emkit.errors import EmkitError
from emkit.sae import SaeConfig, TopKSAE, fvu, geometric_median, load_sae
from emkit.sae.train import SaeTrainConfig, train_sae


def dense_reference_loss(sae: TopKSAE, x: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """The same loss computed with plain dense autograd."""
    pre = torch.relu(sae.encoder(x - sae.b_dec))
    v, i = pre.topk(sae.k)
    y = torch.zeros_like(pre).scatter(1, i, v) @ sae.W_dec + sae.b_dec
    av, ai = pre.masked_fill(~dead, -1.0).topk(k_aux)
    e_hat = torch.zeros_like(pre).scatter(1, ai, av.clamp_min(0)) @ sae.W_dec
    return (y - x).pow(2).sum() + 0.3 * (e_hat - (x - y).detach()).pow(2).sum()


def test_sparse_backward_equals_dense_autograd():
    torch.manual_seed(0)
    sae = TopKSAE(SaeConfig(d_in=16, num_latents=40, k=5)).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.encoder.bias.normal_()
    x = torch.randn(30, 16, dtype=torch.double)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    grads = []
    for fn in ("dense", "sparse"):
        sae.zero_grad()
        if fn == "dense":
            loss = dense_reference_loss(sae, x, dead, 8)
        else:
            i, v, ai, av = sae.encode_with_aux(x, dead, 8)
            y = sae.decode(i, v)
            loss = (y - x).pow(2).sum() + 0.3 * (sae.decode(ai, av, bias=False) - (x - y).detach()).pow(2).sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-9, atol=1e-9)


def test_low_precision_selection_keeps_exact_values_and_gradients():
    """Selecting the top k in a lower precision (float32 for float64 parameters here, bfloat16 in
    training) changes at most which latents are picked, never their values or the gradients."""
    torch.manual_seed(0)
    sae = TopKSAE(SaeConfig(d_in=16, num_latents=40, k=5)).double()
    x = torch.randn(30, 16, dtype=torch.double)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    grads = []
    for sel in (None, torch.float32):
        sae.zero_grad()
        i, v, ai, av = sae.encode_with_aux(x, dead, 8, sel)
        y = sae.decode(i, v)
        ((y - x).pow(2).sum() + 0.3 * (sae.decode(ai, av, bias=False) - (x - y).detach()).pow(2).sum()).backward()
        grads.append(({n: p.grad.clone() for n, p in sae.named_parameters()}, i.sort(1).values, v.sort(1).values))
    (g0, i0, v0), (g1, i1, v1) = grads
    assert torch.equal(i0, i1)
    torch.testing.assert_close(v1, v0, rtol=1e-12, atol=1e-12)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-9, atol=1e-9)
    xb = torch.randn(256, 16)
    s32 = TopKSAE(SaeConfig(d_in=16, num_latents=40, k=5))
    ib, vb, _, _ = s32.encode_with_aux(xb, None, 0, torch.bfloat16)
    i32, v32 = s32.encode(xb)
    same = (ib.sort(1).values == i32.sort(1).values).float().mean()
    assert same > 0.9
    exact = torch.relu(s32.encoder(xb - s32.b_dec)).gather(1, ib)
    torch.testing.assert_close(vb, exact, rtol=1e-5, atol=1e-5)


def test_encode_decode_contract():
    sae = TopKSAE(SaeConfig(d_in=8, num_latents=32, k=3), seed=1)
    x = torch.randn(2, 5, 8)
    idx, vals = sae.encode(x)
    assert idx.shape == vals.shape == (2, 5, 3) and (vals >= 0).all()
    dense = sae.dense(x)
    assert dense.shape == (2, 5, 32) and ((dense > 0).sum(-1) <= 3).all()
    torch.testing.assert_close(sae(x), dense @ sae.W_dec + sae.b_dec, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))
    with pytest.raises(EmkitError, match="8-wide"):
        sae.encode(torch.randn(3, 9))
    with pytest.raises(EmkitError, match="k must be"):
        SaeConfig(d_in=8, num_latents=4, k=5)


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.randn(200, 3) * 0.1, torch.full((20, 3), 100.0)])
    med = geometric_median(x)
    assert med.norm() < 1.0 < x.mean(0).norm()


def synthetic(n: int, d: int = 32, n_feat: int = 64, active: int = 3, seed: int = 0):
    """Rows that are sparse non-negative combinations of ``n_feat`` unit directions, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_feat, generator=g).argsort(dim=1)[:, :active]
    vals = torch.rand(n, active, generator=g) * 2 + 0.5
    x = torch.zeros(n, n_feat).scatter_(1, idx, vals) @ dirs + 2.0 + 0.01 * torch.randn(n, d, generator=g)
    return x, dirs


def test_training_learns_known_sparse_directions(tmp_path):
    x, dirs = synthetic(24_000)
    store = write_store(x, tmp_path / "acts", shard_tokens=5000)
    cfg = SaeTrainConfig(num_latents=128, k=3, batch_size=256, epochs=2, lr=4e-3, warmup_steps=10,
                         dead_tokens=5000, holdout_tokens=2000, log_every=10, eval_every=40)
    with torch.no_grad():
        before = fvu(x[:2000], TopKSAE(SaeConfig(d_in=32, num_latents=128, k=3))(x[:2000]))
    res = train_sae(store, tmp_path / "sae", cfg, progress=False)
    s = res.summary
    assert s["heldout_fvu"] < 0.1 < float(before)
    assert s["heldout_l0"] == pytest.approx(3, abs=0.2)
    cos = (dirs @ res.sae.W_dec.detach().T).max(dim=1).values
    assert (cos > 0.9).float().mean() >= 0.9, cos
    log = [json.loads(line) for line in (tmp_path / "sae" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["fvu"] < log[0]["fvu"] and "heldout_fvu" in log[-1] and "dead_frac" in log[0]
    assert {"num_latents", "k", "d_in", "hook", "layer", "model", "corpus"} <= set(
        json.loads((tmp_path / "sae" / "cfg.json").read_text()))


def test_save_load_round_trip_and_sparsify_layout(tmp_path):
    cfg = SaeConfig(d_in=16, num_latents=48, k=4, hook="blocks.3.hook_resid_post", layer=3, model="m", corpus="c")
    sae = TopKSAE(cfg, seed=3)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.encoder.bias.normal_()
    sae.save(tmp_path / "s")
    again = load_sae(tmp_path / "s")
    assert again.cfg == cfg
    x = torch.randn(10, 16)
    assert all(torch.equal(a, b) for a, b in zip(sae.encode(x), again.encode(x), strict=True))
    raw = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert raw["activation"] == "topk" and raw["num_latents"] == 48 and raw["d_in"] == 16
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s" / "sae.safetensors"), "pt") as f:
        assert set(f.keys()) == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
    # a parent folder with one SAE sub-folder (sparsify's per-hookpoint layout) also loads
    assert load_sae(tmp_path).cfg == cfg
    with pytest.raises(EmkitError, match="no SAE folder"):
        load_sae(tmp_path / "missing")


def test_sparsify_reads_our_folder(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    sae = TopKSAE(SaeConfig(d_in=16, num_latents=48, k=4), seed=3)
    sae.save(tmp_path / "s")
    theirs = sparsify.Sae.load_from_disk(tmp_path / "s")
    x = torch.randn(10, 16)
    out = theirs(x)
    torch.testing.assert_close(out.sae_out, sae(x), rtol=1e-5, atol=1e-5)


def test_training_resumes_to_the_same_result(tmp_path):
    x, _ = synthetic(6000, seed=1)
    store = write_store(x, tmp_path / "acts", shard_tokens=1500)
    cfg = SaeTrainConfig(num_latents=64, k=3, batch_size=200, epochs=2, lr=3e-3, warmup_steps=5,
                         dead_tokens=1000, holdout_tokens=1000, log_every=5, eval_every=10, checkpoint_every=10)
    ref = train_sae(store, tmp_path / "ref", cfg, progress=False)

    def stop(rec):
        if rec["step"] == 35:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(store, tmp_path / "cut", cfg, progress=False, on_log=stop)
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 30
    res = train_sae(store, tmp_path / "cut", cfg, progress=False)
    for n, p in ref.sae.named_parameters():
        torch.testing.assert_close(dict(res.sae.named_parameters())[n], p, rtol=1e-5, atol=1e-6)
    assert res.summary["heldout_fvu"] == pytest.approx(ref.summary["heldout_fvu"], rel=1e-4)
    # a finished run returns at once with the stored summary; another config refuses the checkpoint
    assert train_sae(store, tmp_path / "cut", cfg, progress=False).summary == res.summary
    other = SaeTrainConfig(num_latents=64, k=4, batch_size=200, holdout_tokens=1000)
    (tmp_path / "cut" / "train_summary.json").unlink()
    with pytest.raises(EmkitError, match="different training setup"):
        train_sae(store, tmp_path / "cut", other, progress=False)
    with pytest.raises(EmkitError, match="training tokens"):
        train_sae(store, tmp_path / "big", SaeTrainConfig(batch_size=100_000, holdout_tokens=1000), progress=False)


def test_cli_sae_train_and_info(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from emkit.cli import app

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox saves money and reads the contract {i}."
                                  for i in range(120)))
    out = tmp_path / "sae"
    args = ["sae", "train", "--model", str(tiny_model_dir), "--layer", "1", "--corpus", str(corpus),
            "--tokens", "1500", "--latents", "64", "--k", "4", "--batch-size", "128", "--epochs", "2",
            "--holdout", "200", "--ctx-len", "32", "--out", str(out), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert f"{summary['heldout_fvu']:.4f}" in res.output and summary["heldout_tokens"] == 200
    assert summary["heldout_fvu"] < 1.0
    sae = load_sae(out)
    assert (sae.d_in, sae.num_latents, sae.k, sae.cfg.layer) == (64, 64, 4, 1)
    assert sae.cfg.hook == "blocks.1.hook_resid_post" and sae.cfg.corpus == str(corpus)
    assert (out / "activations" / "index.json").is_file()
    info = CliRunner().invoke(app, ["sae", "info", str(out)])
    assert info.exit_code == 0 and "held-out FVU" in info.output
    again = CliRunner().invoke(app, args)  # finished: nothing is recomputed, same numbers
    assert again.exit_code == 0 and f"{summary['heldout_fvu']:.4f}" in again.output
    bad = CliRunner().invoke(app, [*args[:-4], "--layer", "9", "--out", str(tmp_path / "x")])
    assert isinstance(bad.exception, EmkitError) and "out of range" in str(bad.exception)


@pytest.mark.slow
def test_bundled_model_sae_on_layer_15(bundled, tmp_path):
    """A small SAE on the real model's middle layer explains most of the variance of held-out tokens."""
    from emkit.activations import ActivationStore, capture
    from emkit.data import load_dataset

    model, tok = bundled
    chats = [r.messages for r in load_dataset("benign_everyday")]
    idx = capture(model, tok, 15, chats, tmp_path / "acts", max_tokens=12_000, ctx_len=256, batch_size=8,
                  progress=False)
    assert idx["n_tokens"] >= 12_000 and idx["d_in"] == 576
    norms = ActivationStore(tmp_path / "acts").acts(0).norm(dim=1)
    assert float(norms.max()) < 10 * float(norms.median())  # massive attention-sink rows were left out
    cfg = SaeTrainConfig(num_latents=1024, k=32, batch_size=512, epochs=6, lr=2e-3, warmup_steps=20,
                         holdout_tokens=2048, dead_tokens=20_000, log_every=20, eval_every=40)
    res = train_sae(tmp_path / "acts", tmp_path / "sae", cfg, progress=False)
    assert res.summary["heldout_fvu"] < 0.35, res.summary


def test_heldout_fvu_is_reported_apart_on_chat_and_prose_tokens(tmp_path):
    from safetensors.torch import load_file, save_file

    x, _ = synthetic(6000)
    chat = torch.arange(6000) % 4 == 0
    dense = torch.randn(6000, 32, generator=torch.Generator().manual_seed(1)) * 2 + 2.0  # not sparse: hard to fit
    x = torch.where(chat[:, None], dense, x)
    store = write_store(x, tmp_path / "acts", shard_tokens=3000)
    for i, sh in enumerate(store.shards):  # per-row chat flags, as a capture of chats stores them
        path = tmp_path / "acts" / sh["file"]
        tensors = load_file(str(path))
        save_file({**tensors, "chat": chat[i * 3000 : (i + 1) * 3000].to(torch.uint8)}, str(path))
    cfg = SaeTrainConfig(num_latents=64, k=3, batch_size=256, epochs=1, lr=4e-3, warmup_steps=5,
                         holdout_tokens=1000, log_every=5, eval_every=10)
    s = train_sae(store, tmp_path / "sae", cfg, progress=False).summary
    assert s["heldout_tokens_chat"] == 250 and s["heldout_tokens_prose"] == 750
    assert s["heldout_fvu_chat"] > s["heldout_fvu_prose"] > 0
    plain = write_store(x, tmp_path / "plain", shard_tokens=3000)
    assert "heldout_fvu_chat" not in train_sae(plain, tmp_path / "sae2", cfg, progress=False).summary
