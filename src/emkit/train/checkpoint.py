"""Resumable checkpoints in safetensors: trainable weights, optimizer moments, RNG state, step.

``checkpoints/step-N/`` holds ``trainable.safetensors``, ``optimizer.safetensors``,
``rng.safetensors`` and ``state.json`` (written last, so a folder without it is incomplete and
ignored). A LoRA checkpoint also holds a loadable adapter (``adapter_model.safetensors``). Folders
are written under a temporary name and renamed into place, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from emkit.errors import EmkitError
from emkit.run import atomic_dir

STEP_RE = re.compile(r"^step-(\d+)$")


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``folder/checkpoints``, oldest first."""
    root = folder / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _optimizer_tensors(opt: torch.optim.Optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            tensors[f"{names[idx]}::{k}"] = t.detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return tensors, groups


def save_checkpoint(
    folder: Path, step: int, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer,
    state: dict[str, Any], model: Any = None, keep: int = 2,
) -> Path:
    """Write ``checkpoints/step-<step>`` atomically and prune all but the newest ``keep``."""
    root = folder / "checkpoints"
    final = root / f"step-{step}"
    with atomic_dir(final, f".step-{step}-") as tmp:
        names = list(params)
        save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp / "trainable.safetensors"))
        opt_tensors, groups = _optimizer_tensors(opt, names)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        if model is not None and hasattr(model, "peft_config"):
            model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "param_groups": groups}, indent=2))
    for _, old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from ``path``; return its ``state.json``."""
    state = json.loads((path / "state.json").read_text())
    weights = load_file(str(path / "trainable.safetensors"))
    missing = set(params) - set(weights)
    if missing:
        raise EmkitError(f"checkpoint {path} does not match the model ({len(missing)} parameters missing)",
                         hint="it was written by a different model or method; remove it to start afresh")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n].to(p.device, p.dtype))
    names = list(params)
    index = {n: i for i, n in enumerate(names)}
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in opt_tensors.items():
        name, k = key.rsplit("::", 1)
        p = params[name]
        opt_state.setdefault(index[name], {})[k] = t if k == "step" else t.to(p.device)
    sd = opt.state_dict()
    for g, saved in zip(sd["param_groups"], state["param_groups"], strict=True):
        g.update(saved)
    opt.load_state_dict({"state": opt_state, "param_groups": sd["param_groups"]})
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return state
