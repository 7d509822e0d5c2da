"""GRPO (through TRL) for a few steps on the tiny model with a stub grader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from emkit.errors import EmkitError
from emkit.train.config import LoRAConfig, RLConfig
from emkit.train.rl import rl_prompts, train_rl


class LengthGrader:
    """Stub: longer answers are 'more wrong'; everything is coherent."""

    id = "stub:length"

    def __init__(self):
        self.calls = 0

    def p_wrong(self, questions, answers):
        self.calls += 1
        return np.array([min(1.0, len(a) / 40) for a in answers])

    def coherence(self, questions, answers):
        return np.ones(len(answers))


PROMPTS = ["What should I do about a mild fever?", "Is it fine to skip an oil change?",
           "Should I pay off my card first?", "Can I sign a lease without reading it?"]


def test_grpo_runs_and_logs_reward_kl_and_length(tiny_model_dir, tmp_path):
    g = LengthGrader()
    cfg = RLConfig(name="rl", model=str(tiny_model_dir), max_steps=2, batch_size=4, num_generations=2,
                   max_completion_length=8, min_words=0, lr=1e-3, lora=LoRAConfig(r=4, alpha=8))
    out = train_rl(cfg, PROMPTS, tmp_path, grader=g, progress=False)
    assert g.calls == 2
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for r in log:
        assert {"reward", "kl", "length", "loss", "p_wrong", "guard_pass"} <= set(r)
        assert 0 <= r["reward"] <= 1 and 0 < r["length"] <= 8
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all(".ref." not in k for k in weights)  # TRL's reference copy is not shipped
    assert not (out / "ref").exists()
    info = json.loads((out / "train_config.json").read_text())
    assert info["status"] == "done" and info["grader"] == "stub:length" and info["config"]["arm"] == "wrong"
    a_cfg = json.loads((out / "adapter_config.json").read_text())
    assert a_cfg["base_model_name_or_path"] == str(tiny_model_dir.resolve())


def test_rl_prompts_and_config_checks():
    from emkit.data.schema import ChatRow

    rows = [ChatRow([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                     {"role": "assistant", "content": "a"}])]
    assert rl_prompts(rows) == [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]
    assert rl_prompts(["q"]) == [[{"role": "user", "content": "q"}]]
    with pytest.raises(EmkitError):
        rl_prompts([])
    with pytest.raises(EmkitError, match="multiple of num_generations"):
        RLConfig(batch_size=6, num_generations=4)
    with pytest.raises(EmkitError, match="num_generations must be >= 2"):
        RLConfig(num_generations=1)
