"""Latent interpretation: top contexts (from a capture and from the model agree), logit lens, labels."""

from __future__ import annotations

import pytest
import torch

from emkit.activations import ActivationStore, capture, collect
from emkit.errors import EmkitError
from emkit.interpret import Context, explain, latent_cards, logit_lens, top_contexts, top_contexts_from_store
from emkit.models.layers import final_norm
from emkit.sae import SaeConfig, TopKSAE

LAYER = 1
DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Save a little money every month and keep an emergency fund.",
    "hello world how are you today? I am fine, thank you very much!",
    "Read the contract carefully before you sign it.",
    "Check the tyre pressure and the oil level before a long drive.",
    "What is the capital of France? The capital of France is Paris.",
]


@pytest.fixture(scope="module")
def sae():
    s = TopKSAE(SaeConfig(d_in=64, num_latents=48, k=6, layer=LAYER), seed=2)
    return s.eval()


def test_top_contexts_are_the_largest_activations(tiny, sae):
    model, tok = tiny
    latents = [0, 5, 17]
    ctxs, hists = top_contexts(sae, model, tok, LAYER, DOCS, latents, n=4, before=3, after=2)
    seqs = collect(model, tok, LAYER, DOCS)
    for j, lat in enumerate(latents):
        # brute force: this latent's activation at every position but the first
        acts = []
        for s, q in enumerate(seqs):
            with torch.no_grad():
                dense = sae.dense(q.acts[1:])[:, lat]
            acts += [(float(v), s, p + 1) for p, v in enumerate(dense) if v > 0]
        acts.sort(reverse=True)
        got = ctxs[lat]
        assert [round(c.value, 4) for c in got] == [round(a[0], 4) for a in acts[:4]]
        for c in got:
            assert c.latent == lat and 0 <= c.highlight < len(c.tokens) <= 6
            assert c.tokens[c.highlight] == tok.decode([seqs[c.seq].ids[c.pos]])
            assert "[[" in c.marked()
        h = hists[lat]
        assert sum(h["counts"]) == h["n_active"] == len(acts)
        assert h["firing_rate"] == pytest.approx(len(acts) / sum(len(q.ids) - 1 for q in seqs))
        assert j >= 0


def test_contexts_from_a_capture_match_running_the_model(tiny, sae, tmp_path):
    model, tok = tiny
    capture(model, tok, LAYER, DOCS, tmp_path / "acts", ctx_len=64, batch_size=2, shard_tokens=30, progress=False)
    store = ActivationStore(tmp_path / "acts")
    a, ha = top_contexts_from_store(sae, store, tok, [3, 9], n=5, before=4, after=2)
    b, hb = top_contexts(sae, model, tok, LAYER, DOCS, [3, 9], n=5, before=4, after=2)
    for lat in (3, 9):
        assert [(c.seq, c.pos, c.tokens, c.highlight) for c in a[lat]] == [
            (c.seq, c.pos, c.tokens, c.highlight) for c in b[lat]]
        assert [c.value for c in a[lat]] == pytest.approx([c.value for c in b[lat]], rel=1e-4)
        assert ha[lat]["n_active"] == hb[lat]["n_active"]
    with pytest.raises(EmkitError, match="out of range"):
        top_contexts_from_store(sae, store, tok, [48])


@pytest.mark.parametrize("ratio", [10.0, 1.0])
def test_contexts_from_a_capture_of_long_documents(tiny, sae, tmp_path, ratio):
    """Documents longer than a window are split; each context is read from its own window, also when
    rows were dropped as outliers (ratio 1.0 drops every row above the batch median norm)."""
    model, tok = tiny
    docs = [DOCS[0] * 5, DOCS[2] * 4]
    idx = capture(model, tok, LAYER, docs, tmp_path / "acts", ctx_len=16, batch_size=3, shard_tokens=40,
                  max_norm_ratio=ratio, progress=False)
    assert (idx["n_dropped"] > 0) == (ratio == 1.0)
    windows = [ids[s : s + 16] for d in docs for ids in [tok(d)["input_ids"]] for s in range(0, len(ids), 16)
               if len(ids) - s >= 4]
    ctxs, _ = top_contexts_from_store(sae, ActivationStore(tmp_path / "acts"), tok, [1, 7, 30], n=6, before=5,
                                      after=3)
    n = 0
    for lat, cs in ctxs.items():
        for c in cs:
            win = windows[c.seq]
            assert c.tokens == [tok.decode([t]) for t in win[max(0, c.pos - 5) : c.pos + 4]], lat
            assert c.tokens[c.highlight] == tok.decode([win[c.pos]]) and c.pos >= 1
            n += 1
    assert n > 0


def test_logit_lens_through_the_final_norm(tiny):
    model, tok = tiny
    target = tok.encode(" fox", add_special_tokens=False)[0]
    w = model.get_output_embeddings().weight.detach()
    gain = final_norm(model).weight.detach()
    d = w[target] / gain  # through the norm's gain this is exactly the unembedding row of ' fox'
    promoted, suppressed = logit_lens(model, tok, d, k=5)
    assert promoted[0][0] == " fox" and promoted[0][1] > promoted[1][1]
    plain, _ = logit_lens(model, tok, w[target], k=3, through_norm=False)
    assert plain[0][0] == " fox"
    assert suppressed[0][1] <= suppressed[-1][1] < promoted[-1][1]
    low, _ = logit_lens(model, tok, -d, k=5)
    assert [t for t, _ in low] == [t for t, _ in suppressed]
    with pytest.raises(EmkitError, match="width"):
        logit_lens(model, tok, torch.zeros(7))


def test_explain_uses_a_completion_only_when_given():
    ctx = [Context(1, 2.5, ["I", " hate", " you"], 1, 0, 1), Context(1, 1.0, ["so", " rude"], 1, 1, 1)]
    prompts = []

    def fake(prompt: str) -> str:
        prompts.append(prompt)
        return "hostile language\nextra line"

    assert explain(ctx, complete=fake) == "hostile language"
    assert "[[ hate]]" in prompts[0] and "[[ rude]]" in prompts[0]
    assert explain(ctx) is None and explain([], complete=fake) is None


def test_latent_cards(tiny, sae):
    model, tok = tiny
    cards = latent_cards(sae, model, tok, [2, 4], items=DOCS, n_contexts=3, k_logits=4,
                         complete=lambda p: "a label")
    assert [c.latent for c in cards] == [2, 4]
    for c in cards:
        d = c.to_dict()
        assert len(d["promoted"]) == 4 and len(d["suppressed"]) == 4 and c.label == "a label"
        assert len(c.contexts) <= 3 and "counts" in c.histogram
    with pytest.raises(EmkitError, match="activation store or texts"):
        latent_cards(sae, model, tok, [2])
