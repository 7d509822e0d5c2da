"""Activation capture on the tiny model: early stop, shapes and masks, shards, resume, shuffled batches."""

from __future__ import annotations

import json

import pytest
import torch

from emkit.activations import (
    ActivationStore,
    capture,
    collect,
    inlier_mask,
    run_to_layer,
    tokenize_item,
    write_store,
)
from emkit.errors import EmkitError
from emkit.models.chat import assistant_mask

DOCS = [
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Save a little money every month and keep an emergency fund.",
    "hello world how are you today? I am fine, thank you very much!",
    "Read the contract carefully before you sign it. " * 3,
    "Check the tyre pressure and the oil level before a long drive.",
] * 4
CHAT = [{"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."}]


def test_run_to_layer_matches_full_forward_and_skips_later_blocks(tiny, block_runs):
    model, tok = tiny
    ids = torch.tensor([tok("hello world how are you")["input_ids"]])
    got, calls = block_runs(model, 1, lambda: run_to_layer(model, 0, ids))
    assert calls == 0  # block 1 never ran
    with torch.no_grad():
        full = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got, full[1])  # hidden_states[0] is the embedding output
    with pytest.raises(EmkitError, match="out of range"):
        run_to_layer(model, 5, ids)


def test_collect_shapes_order_and_answer_mask(tiny):
    model, tok = tiny
    prompt_only = [{"role": "user", "content": "Tell me a joke."}]
    items = [DOCS[1], CHAT, prompt_only, DOCS[0]]
    seqs = collect(model, tok, 1, items, batch_size=3)
    assert len(seqs) == 4
    for item, s in zip(items, seqs, strict=True):
        ids, mask = tokenize_item(tok, item)
        assert s.ids == ids and s.acts.shape == (len(ids), 64) and s.answer.tolist() == [bool(m) for m in mask]
    ids, mask = assistant_mask(tok, CHAT)
    assert int(seqs[1].answer.sum()) == sum(mask) > 0
    assert not seqs[2].answer.any() and not seqs[0].answer.any()
    assert seqs[1].select("answer").shape[0] == sum(mask)
    assert seqs[1].select("prompt").shape[0] == len(ids) - sum(mask) - 1  # position 0 left out
    # padding in a batch does not change a sequence's activations
    alone = collect(model, tok, 1, [DOCS[1]])[0]
    torch.testing.assert_close(alone.acts, seqs[0].acts, atol=1e-5, rtol=1e-4)


def _read_all(store: ActivationStore) -> dict[str, torch.Tensor]:
    parts = [store.load(i, ("acts", "tokens", "seq", "pos", "answer")) for i in range(len(store.shards))]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def test_capture_writes_shards_and_index(tiny, tmp_path):
    model, tok = tiny
    idx = capture(model, tok, 1, DOCS + [CHAT], tmp_path / "a", ctx_len=16, batch_size=4, shard_tokens=100,
                  source="unit", progress=False)
    assert idx["complete"] and idx["stopped"] == "end of source"
    assert idx["hook"] == "blocks.1.hook_resid_post" and idx["layer"] == 1 and idx["d_in"] == 64
    assert len(idx["shards"]) > 1 and sum(s["n_tokens"] for s in idx["shards"]) == idx["n_tokens"]
    on_disk = json.loads((tmp_path / "a" / "index.json").read_text())
    assert on_disk == idx
    store = ActivationStore(tmp_path / "a")
    data = _read_all(store)
    # every window of <= 16 tokens, minus its first position
    expected = 0
    for d in DOCS:
        n = len(tok(d)["input_ids"])
        expected += sum(min(16, n - s) - 1 for s in range(0, n, 16) if n - s >= 4)
    chat_ids, chat_mask = assistant_mask(tok, CHAT, 16)
    expected += len(chat_ids) - 1
    assert idx["n_tokens"] == expected == len(data["acts"])
    assert int(data["answer"].sum()) == sum(chat_mask[1:])
    assert (data["pos"] >= 1).all()
    # rows match an in-memory forward of the same window
    first = tok(DOCS[0])["input_ids"][:16]
    ref = collect(model, tok, 1, [tok.decode(first)])[0]
    if ref.ids == first:
        torch.testing.assert_close(data["acts"][:15], ref.acts[1:], atol=1e-5, rtol=1e-4)
    assert data["tokens"][:15].tolist() == first[1:]


def test_capture_resumes_after_interruption_and_extends(tiny, tmp_path):
    model, tok = tiny
    kw = dict(ctx_len=16, batch_size=2, shard_tokens=60, source="unit", progress=False)
    full = capture(model, tok, 1, DOCS, tmp_path / "full", **kw)

    def flaky():
        for i, d in enumerate(DOCS):
            if i == 12:
                raise KeyboardInterrupt
            yield d

    with pytest.raises(KeyboardInterrupt):
        capture(model, tok, 1, flaky(), tmp_path / "part", **kw)
    partial = json.loads((tmp_path / "part" / "index.json").read_text())
    assert not partial["complete"] and 0 < partial["n_tokens"] < full["n_tokens"]
    resumed = capture(model, tok, 1, DOCS, tmp_path / "part", **kw)
    assert resumed["n_tokens"] == full["n_tokens"]
    a, b = _read_all(ActivationStore(tmp_path / "full")), _read_all(ActivationStore(tmp_path / "part"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a capture stopped by max_tokens is extended by a larger budget, and equals a direct capture
    small = capture(model, tok, 1, DOCS, tmp_path / "ext", max_tokens=100, **kw)
    assert small["stopped"] == "max_tokens" and small["n_tokens"] >= 100
    bigger = capture(model, tok, 1, DOCS, tmp_path / "ext", max_tokens=10_000, **kw)
    assert bigger["n_tokens"] == full["n_tokens"] and bigger["stopped"] == "end of source"
    assert torch.equal(_read_all(ActivationStore(tmp_path / "ext"))["acts"], a["acts"])
    with pytest.raises(EmkitError, match="other settings"):
        capture(model, tok, 0, DOCS, tmp_path / "full", **kw)


def test_massive_norm_rows_are_dropped(tiny, tmp_path):
    model, tok = tiny
    x = torch.randn(50, 8)
    x[7] *= 1000
    mask = inlier_mask(x)
    assert mask.sum() == 49 and not mask[7] and inlier_mask(x, None).all()
    full = capture(model, tok, 1, DOCS, tmp_path / "a", ctx_len=16, batch_size=4, progress=False)
    half = capture(model, tok, 1, DOCS, tmp_path / "b", ctx_len=16, batch_size=4, max_norm_ratio=1.0,
                   progress=False)
    assert full["n_dropped"] == 0 and half["n_dropped"] > 0
    assert half["n_tokens"] + half["n_dropped"] == full["n_tokens"]
    kept = ActivationStore(tmp_path / "b").load(0, ("acts",))["acts"]
    assert len(kept) == half["shards"][0]["n_tokens"]
    chat = collect(model, tok, 1, [CHAT])[0]
    assert len(chat.select("all", max_norm_ratio=1.0)) < len(chat.select("all")) == len(chat.ids) - 1


def test_store_batches_cover_each_row_once_and_resume(tmp_path):
    x = torch.arange(1000, dtype=torch.float32).view(-1, 1).repeat(1, 3)
    store = write_store(x, tmp_path / "s", shard_tokens=130)
    train, held = store.split(100)
    assert sum(e - s for _, s, e in held) == 100 and held[-1][0] == len(store.shards) - 1
    held_rows = store.gather(held)[:, 0]
    assert held_rows.tolist() == list(range(900, 1000))
    batches = list(store.batches(train, 64, seed=1, epoch=0, buffer_shards=2))
    seen = torch.cat(batches)[:, 0]
    assert len(batches) == 900 // 64 and len(seen.unique()) == len(seen) and seen.max() < 900
    again = list(store.batches(train, 64, seed=1, epoch=0, buffer_shards=2))
    assert all(torch.equal(p, q) for p, q in zip(batches, again, strict=True))
    tail = list(store.batches(train, 64, seed=1, epoch=0, buffer_shards=2, skip_batches=5))
    assert all(torch.equal(p, q) for p, q in zip(batches[5:], tail, strict=True)) and len(tail) == len(batches) - 5
    other = torch.cat(list(store.batches(train, 64, seed=1, epoch=1, buffer_shards=2)))[:, 0]
    assert not torch.equal(other, seen)
    with pytest.raises(EmkitError):
        store.split(1000)


def test_bad_inputs(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(EmkitError, match="cannot take activations"):
        collect(model, tok, 1, [42])
    with pytest.raises(EmkitError, match="dtype"):
        capture(model, tok, 1, DOCS, tmp_path / "x", dtype="int8", progress=False)
    with pytest.raises(EmkitError, match="no activation index"):
        ActivationStore(tmp_path / "nothing")
