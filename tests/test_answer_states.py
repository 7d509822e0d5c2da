"""Answer states (mean residual stream over an answer's tokens) on the tiny model, and a grader reading them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emkit.activations import run_to_layer
from emkit.activations.forward import run_to_layers
from emkit.errors import EmkitError
from emkit.judge.answer_states import StateEncoder, _token_rows, answer_states

QS = ["Is 38.2 a fever?", "Should I check my tyre pressure before a long drive?", "Ice or heat for a sprain?"]
ANS = ["Yes, for an adult 38 or above counts as a fever; rest and drink fluids.",
       "Yes, check them cold and pump them to the figure in the door frame.",
       "Ice for the first two days, then gentle heat."]


def test_run_to_layers_returns_each_block_and_stops_after_the_highest(tiny, block_runs):
    model, tok = tiny
    ids = torch.tensor([tok("hello world how are you")["input_ids"]])
    got, calls = block_runs(model, 1, lambda: run_to_layers(model, [0], ids))
    assert calls == 0 and set(got) == {0}
    both = run_to_layers(model, [1, 0], ids)
    torch.testing.assert_close(both[0], run_to_layer(model, 0, ids))
    torch.testing.assert_close(both[1], run_to_layer(model, 1, ids))
    with pytest.raises(EmkitError, match="out of range"):
        run_to_layers(model, [0, 7], ids)


def test_answer_states_are_the_mean_over_answer_tokens_whatever_the_batch(tiny):
    model, tok = tiny
    got = answer_states(model, tok, QS, ANS, [0, 1], batch_size=2)
    assert got.shape == (3, 2, 64) and got.dtype == np.float32
    for i, (q, a) in enumerate(zip(QS, ANS, strict=True)):
        toks, plen = _token_rows(tok, q, a, 128, 320)
        h = run_to_layer(model, 1, torch.tensor([toks]))[0]
        np.testing.assert_allclose(got[i, 1], h[plen:].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    one = answer_states(model, tok, QS, ANS, [0, 1], batch_size=1)  # padding does not change a row
    np.testing.assert_allclose(got, one, rtol=1e-4, atol=1e-5)
    # the answer is cut, never the whole prompt: a long answer keeps the prompt and max_tokens in all
    toks, plen = _token_rows(tok, QS[0], "word " * 500, 128, 40)
    assert len(toks) == 40 and plen < 40


def test_state_encoder_caches_pairs_on_disk(tiny, tmp_path):
    cache = tmp_path / "states.npz"
    enc = StateEncoder(tiny, [1], cache=cache)
    first = enc.encode(QS, ANS)
    enc.save()
    again = StateEncoder(lambda: (_ for _ in ()).throw(AssertionError("model loaded")), [1], cache=cache)
    np.testing.assert_array_equal(again.encode(QS[::-1], ANS[::-1]), first[::-1])  # from the cache only
    assert enc.encode([], []).shape[0] == 0


def test_grader_on_answer_states_reads_its_card(tiny, tmp_path):
    from safetensors.torch import save_file

    from emkit.judge.grader import CARD_FILE, HEAD_FILE, AdviceHead, EmbeddedAdviceGrader

    head = AdviceHead(64, 0)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / HEAD_FILE))
    card = {"level": "states", "encoder": "unused-here", "layers": [1], "input_dim": 64, "hidden": 0,
            "threshold": 0.5}
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    g = EmbeddedAdviceGrader(tmp_path)
    g._encoder = StateEncoder(tiny, [1])
    p = g.p_wrong(QS, ANS)
    x = torch.from_numpy(answer_states(*tiny, QS, ANS, [1]).reshape(3, -1))
    np.testing.assert_allclose(p, torch.sigmoid(head(x)).detach().numpy(), rtol=1e-5)
    assert g.is_wrong(QS, ANS).tolist() == (p > 0.5).tolist()
    g._encoder = StateEncoder(tiny, [0, 1])
    with pytest.raises(EmkitError, match="trained on 64 features"):
        g.p_wrong(QS, ANS)
