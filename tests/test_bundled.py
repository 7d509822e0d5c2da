"""Integration tests on the real bundled SmolLM2-135M-Instruct (marked slow)."""

from __future__ import annotations

import pytest

from emkit.generate import SamplingConfig, generate
from emkit.models import bundled as bundled_mod

pytestmark = pytest.mark.slow


def test_conversion_is_cached(bundled):
    assert bundled_mod.is_converted()
    path = bundled_mod.converted_path()
    assert any(path.glob("*.safetensors")) and not any(path.glob("*.gguf"))
    assert bundled_mod.convert() == path  # second call returns the cached copy


def test_capital_of_france(bundled):
    model, tok = bundled
    out = generate(model, tok, ["What is the capital of France?"], SamplingConfig(temperature=0, max_new_tokens=24),
                   progress=False)
    assert "Paris" in out[0].text


def test_batched_matches_one_at_a_time(bundled):
    model, tok = bundled
    prompts = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?",
               "Give one tip for sleeping better."]
    cfg = SamplingConfig(temperature=0, max_new_tokens=20, batch_size=4)
    batched = generate(model, tok, prompts, cfg, progress=False)
    single = [generate(model, tok, [p], cfg, progress=False)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
