"""Quiet offline runs: local models switch Hugging Face's offline mode on, Hub ids switch it back off."""

from __future__ import annotations

import os
import subprocess
import sys

import huggingface_hub.constants as hub
import pytest

from emkit.models import load, offline
from emkit.models.load import resolve_spec

NETWORK_NOISE = ("Name or service not known", "Unable to fetch remote file", "Could not find a config file",
                 "Temporary failure in name resolution", "huggingface.co")


@pytest.fixture
def fresh(monkeypatch):
    """The offline switch as in a new process where the user set nothing (restored afterwards)."""
    for var in offline.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(offline, "USER_CHOSE", False)
    monkeypatch.setattr(offline, "_state", {"ours": False})
    monkeypatch.setattr(load, "check_hub_reachable", lambda repo: None)  # as if the Hub answered


def test_a_local_folder_goes_offline_and_a_hub_id_back_online(fresh, tiny_model_dir):
    resolve_spec(tiny_model_dir)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hub.HF_HUB_OFFLINE and offline.is_offline()
    assert resolve_spec("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert "HF_HUB_OFFLINE" not in os.environ and not hub.HF_HUB_OFFLINE and not offline.is_offline()


def test_datasets_follows_and_a_hub_corpus_goes_back_online(fresh, monkeypatch, tiny_model_dir):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    resolve_spec(tiny_model_dir)
    assert datasets.config.HF_HUB_OFFLINE
    from emkit.data.corpus import iter_hub

    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: seen.append(datasets.config.HF_HUB_OFFLINE)
                        or [{"text": "a document"}])
    assert list(iter_hub("someone/corpus")) == ["a document"]
    assert seen == [False] and not hub.HF_HUB_OFFLINE and "HF_HUB_OFFLINE" not in os.environ


def test_the_bundled_name_goes_offline(fresh, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("EMKIT_EXAMPLE_MODEL", str(tiny_model_dir))
    assert resolve_spec("smollm2-135m-instruct") == str(tiny_model_dir)
    assert hub.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"


def test_the_users_choice_is_left_alone(fresh, monkeypatch, tiny_model_dir):
    monkeypatch.setattr(offline, "USER_CHOSE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    resolve_spec(tiny_model_dir)
    assert os.environ["HF_HUB_OFFLINE"] == "0" and not hub.HF_HUB_OFFLINE and not offline.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    resolve_spec("Qwen/Qwen2.5-0.5B-Instruct")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hub.HF_HUB_OFFLINE


SCRIPT = """
import json, os, sys
from pathlib import Path
from emkit.data.schema import ChatRow
from emkit.models import load_model
from emkit.run import Run
from emkit.train.config import LoRAConfig, SFTConfig
from emkit.train.sft import finetune

rows = [ChatRow([{"role": "user", "content": f"question {i}?"},
                 {"role": "assistant", "content": "See a doctor."}]) for i in range(4)]
cfg = SFTConfig(name="ft", model="smollm2-135m-instruct", max_steps=2, batch_size=2, save_every=1,
                lora=LoRAConfig(r=2, alpha=4), seed=0, device="cpu")
folder = finetune(cfg, rows, Run(sys.argv[1]), progress=False)
print(json.loads((Path(folder) / "adapter_config.json").read_text())["base_model_name_or_path"])
model, tok = load_model(folder, device="cpu")
print(type(model).__name__, os.environ.get("HF_HUB_OFFLINE"))
"""


def test_training_and_loading_an_adapter_of_the_bundled_model_is_quiet(tiny_model_dir, tmp_path):
    """Saving a LoRA adapter makes PEFT look its base up on the Hub; offline, that printed warnings."""
    env = {**os.environ, "EMKIT_EXAMPLE_MODEL": str(tiny_model_dir), "OMP_NUM_THREADS": "1"}
    for var in offline.ENV_VARS:
        env.pop(var, None)
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["smollm2-135m-instruct", "PeftModelForCausalLM", "1"]
    noise = [w for w in NETWORK_NOISE if w in res.stderr]
    assert not noise, f"network warnings: {noise}\n{res.stderr[-3000:]}"
