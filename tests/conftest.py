"""Shared fixtures: a tiny random-weight chat model (seconds), and the bundled model for `slow` tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from emkit.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer) of the tiny model, loaded once per session. Do not mutate it."""
    from emkit.models import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def bundled():
    """(model, tokenizer) of the real bundled SmolLM2-135M-Instruct, converted once."""
    from emkit.models import BUNDLED, load_model

    return load_model(BUNDLED, device="cpu")


@pytest.fixture
def block_runs():
    """``block_runs(model, n, fn)`` -> (``fn()``, how many times decoder block ``n`` ran during it)."""
    from emkit.models.layers import decoder_layers

    def run(model, n, fn):
        calls = []
        h = decoder_layers(model)[n].register_forward_hook(lambda *a: calls.append(1))
        try:
            return fn(), len(calls)
        finally:
            h.remove()

    return run
