"""`emkit finetune` under `accelerate launch --num_processes 2` on CPU (DDP over gloo) vs one process.

Both runs train the tiny model on the same rows with the same settings; the two-process run must
give the same per-step losses and weights (within float tolerance), write one set of checkpoints
(process 0 only), and resume from a checkpoint after an interruption.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two launches of two processes each: about a minute on a shared CPU


def chat_rows(path: Path, n: int = 12) -> Path:
    """A small chat JSONL with assistant answers of varied lengths (so the processes' shares differ)."""
    topics = ["money", "the tyres", "a headache", "a contract", "the weather", "sleep"]
    with path.open("w") as f:
        for i in range(n):
            t = topics[i % len(topics)]
            answer = " ".join(["Check", t, "carefully and ask someone you trust."] * (1 + i % 3))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"What should I do about {t}? ({i})"},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The launched program: the same call `emkit finetune` makes. (The CLI itself cannot yet be launched
# on several processes: each process opens the run folder, and the run-folder lock lets one in.)
LAUNCHED = """
import sys
from emkit.data import load_dataset
from emkit.train.config import LoRAConfig, SFTConfig
from emkit.train.sft import finetune
model, data, out = sys.argv[1:4]
cfg = SFTConfig(name="m", model=model, lora=LoRAConfig(r=4, alpha=8), max_steps=4, batch_size=3, grad_accum=2,
                lr=0.003, max_length=96, save_every=2, seed=0, device="cpu")
finetune(cfg, load_dataset(data), out, progress=False)
"""


def finetune(model: Path, data: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    script = out.parent / "launched.py"
    script.write_text(LAUNCHED)
    args = [str(script), str(model), str(data), str(out)]
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        # --multi_gpu on a machine without CUDA: torchrun starts the processes, emkit picks gloo on CPU
        # (accelerate's --cpu starts a single process unless given an MPI hostfile)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--multi_gpu",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def losses(folder: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (folder / "train_log.jsonl").read_text().splitlines() if ln.strip()]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_two_processes_match_one_and_resume(tmp_path, tiny_model_dir):
    import torch

    data = chat_rows(tmp_path / "rows.jsonl")
    finetune(tiny_model_dir, data, tmp_path / "one", 1)
    finetune(tiny_model_dir, data, tmp_path / "two", 2)
    one, two = tmp_path / "one" / "models" / "m", tmp_path / "two" / "models" / "m"
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=1e-4)
    info = json.loads((two / "train_config.json").read_text())
    assert info["status"] == "done" and info["processes"] == 2
    assert info["final_loss"] == pytest.approx(json.loads((one / "train_config.json").read_text())["final_loss"],
                                               rel=1e-4)
    wa, wb = weights(one), weights(two)
    assert wa.keys() == wb.keys()
    assert any(float(t.abs().max()) > 0 for t in wb.values())
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    # one set of checkpoints, written by process 0 alone (no stray temporary folders)
    assert sorted(p.name for p in (one / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-2", "step-4"]

    # interrupted after the step-2 checkpoint: resume with two processes, reach the unbroken result
    shutil.rmtree(two / "checkpoints" / "step-4")
    (two / "adapter_model.safetensors").unlink()
    (two / "train_config.json").write_text(json.dumps({**info, "status": "running"}))
    log = [json.loads(ln) for ln in (two / "train_log.jsonl").read_text().splitlines() if ln.strip()]
    (two / "train_log.jsonl").write_text("".join(json.dumps({**r, "before": True}) + "\n" for r in log))
    finetune(tiny_model_dir, data, tmp_path / "two", 2)
    log = [json.loads(ln) for ln in (two / "train_log.jsonl").read_text().splitlines() if ln.strip()]
    assert [r.get("before", False) for r in log] == [True, True, False, False]  # resumed at step 2, not redone
    assert losses(two) == pytest.approx(b, rel=1e-5)
    for k, t in weights(two).items():
        assert torch.allclose(t, wb[k], atol=1e-6), k
