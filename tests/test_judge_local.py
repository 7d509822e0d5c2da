"""The local-model judge: exact number probabilities for any tokenizer, and the rubric with generation."""

from __future__ import annotations

import json

import pytest
import torch

from emkit.judge import Item, JudgmentCache
from emkit.judge.local import LocalJudge, continuation_ids, digit_start_mask, number_distribution
from emkit.models.chat import render_prompt
from emkit.results import ResultsDB

CHECK = (0, 1, 5, 9, 10, 11, 37, 50, 90, 99, 100)


def brute_force(model, tok, prompt_text: str, mask: torch.Tensor) -> dict[int, float]:
    """P(n) for some numbers by scoring prompt + number tokens in full, one sequence at a time."""
    ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    out = {}
    with torch.no_grad():
        for n in CHECK:
            c = continuation_ids(tok, ids, prompt_text, str(n))
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids + c])).logits[0].float(), -1)
            lp = sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(c))
            more = float(logp[len(ids) + len(c) - 1][mask[: logp.shape[-1]]].exp().sum())
            out[n] = float(torch.tensor(lp).exp()) * (1 - more)
    return out


def test_number_probabilities_match_brute_force(tiny):
    model, tok = tiny
    lens = {len(tok(str(n), add_special_tokens=False)["input_ids"]) for n in range(101)}
    assert len(lens) > 1, "the tiny tokenizer should spell some numbers with several tokens"
    mask = digit_start_mask(tok, model.get_output_embeddings().weight.shape[0])
    prompt = render_prompt(tok, "Rate this from 0 to 100: hello world")
    fast = number_distribution(model, tok, prompt, mask)
    slow = brute_force(model, tok, prompt, mask)
    assert set(fast) == set(range(101))
    assert {len(tok(str(n), add_special_tokens=False)["input_ids"]) for n in CHECK} == lens
    for n in CHECK:
        assert fast[n] == pytest.approx(slow[n], rel=1e-3, abs=1e-9)
    assert sum(fast.values()) <= 1.0 + 1e-6


def test_multi_token_numbers_on_the_bundled_tokenizer_style(tiny):
    """Digits split one per token (as SmolLM2 does): '85' = '8' then '5' then a non-digit."""
    _, tok = tiny
    mask = digit_start_mask(tok, len(tok))
    assert bool(mask[tok.convert_tokens_to_ids("7")])
    assert not bool(mask[tok.convert_tokens_to_ids(tok.tokenize(" hello")[0])])


def test_local_logprob_judge_scores_and_caches(tiny, tmp_path):
    model, tok = tiny
    j = LocalJudge(model, tok, name="tiny")
    assert j.id == "local:tiny" and j.metrics == ("aligned", "coherent")
    cache = JudgmentCache(ResultsDB(tmp_path / "r.sqlite"))
    out = j.judge([Item("Q?", "An answer."), Item("Q?", "Another.")], cache, progress=False)
    for d in out:
        raw = json.loads(d["aligned"].raw)
        mass = raw["number_mass"]
        assert 0 <= mass <= 1
        assert (d["aligned"].score is None) == (mass < 0.25)
        if d["aligned"].score is not None:
            assert 0 <= d["aligned"].score <= 100
    calls = []
    j.score_pairs = lambda pairs: calls.append(pairs) or []
    again = j.judge([Item("Q?", "An answer.")], cache, progress=False)
    assert calls == [] and again[0]["aligned"].cached


def test_local_min_mass_zero_always_gives_a_weighted_mean(tiny):
    model, tok = tiny
    j = LocalJudge(model, tok, name="tiny", min_mass=0.0)
    d = j.judge([Item("Q?", "An answer.")], progress=False)[0]
    probs = json.loads(d["coherent"].raw)["number_probs"]
    assert d["coherent"].score is not None and 0 <= d["coherent"].score <= 100
    assert len(probs) == 20


def test_local_rubric_resamples_invalid_generations(tiny):
    model, tok = tiny
    j = LocalJudge(model, tok, mode="rubric", name="tiny", rubric_max_tokens=6, rubric_temperature=1.0)
    assert j.metrics == ("rubric",)
    d = j.judge([Item("Q?", "An answer.")], progress=False)[0]["rubric"]
    raw = json.loads(d.raw)
    # a random tiny model never writes 'ANSWER: <label>': first sample + 3 resamples, all invalid
    assert d.label is None and d.score is None and len(raw["outputs"]) == 4
