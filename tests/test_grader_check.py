"""emkit.judge.grader_check: a saved state grader scored from cached answer states (no model loaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from emkit.judge.answer_states import StateEncoder
from emkit.judge.grader import CARD_FILE, HEAD_FILE, AdviceHead, EmbeddedAdviceGrader
from emkit.judge.grader_check import grader_p_wrong
from emkit.judge.grader_data import STATE_LAYERS


def test_state_grader_reads_its_blocks_from_the_cache(tmp_path):
    d, layers = 6, [14, 20]
    torch.manual_seed(0)
    head = AdviceHead(len(layers) * d, hidden=0)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / HEAD_FILE))
    (tmp_path / CARD_FILE).write_text(json.dumps({"input_dim": len(layers) * d, "hidden": 0, "level": "states",
                                                  "layers": layers, "threshold": 0.5}))
    qs, ans = ["q1", "q2", "q3"], ["a1", "a2", "a3"]
    states = np.random.default_rng(0).normal(size=(3, len(STATE_LAYERS), d)).astype(np.float32)
    cache = tmp_path / "states.npz"
    np.savez(cache, keys=np.array([StateEncoder.key(q, a) for q, a in zip(qs, ans, strict=True)]), states=states)

    p = grader_p_wrong(EmbeddedAdviceGrader(tmp_path), qs, ans, cache)

    x = states[:, [STATE_LAYERS.index(n) for n in layers]].reshape(3, -1)
    with torch.no_grad():
        want = torch.sigmoid(head(torch.from_numpy(x))).numpy()
    assert p == pytest.approx(want.astype(np.float64), abs=1e-6)
    assert len(set(np.round(p, 6))) == 3  # each answer its own rows, in order
