"""Save and load SAEs as a folder in EleutherAI sparsify's layout: ``cfg.json`` + ``sae.safetensors``.

``cfg.json`` carries sparsify's keys (``activation``, ``expansion_factor``, ``normalize_decoder``,
``num_latents``, ``k``, ``multi_topk``, ``skip_connection``, ``transcode``, ``d_in``) and emkit's
provenance (``hook``, ``layer``, ``model``, ``corpus``, ``meta``), which sparsify ignores. The tensors
are ``encoder.weight [F, d]``, ``encoder.bias [F]``, ``W_dec [F, d]`` and ``b_dec [d]``. A folder
written by sparsify (top-k, no skip connection) loads too.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from emkit.errors import EmkitError
from emkit.run import atomic_write_text
from emkit.sae.config import SaeConfig

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


def sae_cfg_dict(cfg: SaeConfig) -> dict[str, Any]:
    return {
        "activation": "topk",
        "expansion_factor": max(1, cfg.num_latents // cfg.d_in),
        "normalize_decoder": True,
        "num_latents": cfg.num_latents,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": cfg.d_in,
        "hook": cfg.hook,
        "layer": cfg.layer,
        "model": cfg.model,
        "corpus": cfg.corpus,
        "meta": cfg.meta,
        "format": "emkit.sae/1 (sparsify layout)",
    }


def save_sae(sae: torch.nn.Module, folder: str | Path) -> Path:
    """Write ``cfg.json`` and ``sae.safetensors`` of ``sae`` (a module with a ``cfg``: :class:`SaeConfig`)
    into ``folder`` (each atomically)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=".sae.", suffix=".safetensors", dir=out)
    os.close(fd)
    try:
        save_file({k: state[k] for k in TENSORS}, tmp, metadata={"format": "pt"})
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an SAE folder is meant to be shared
        os.replace(tmp, out / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_text(out / CFG, json.dumps(sae_cfg_dict(sae.cfg), indent=2))
    os.chmod(out / CFG, 0o644)
    return out


def _find(folder: Path, hook: str | None) -> Path:
    if (folder / CFG).is_file():
        return folder
    if hook and (folder / hook / CFG).is_file():
        return folder / hook
    subs = [p for p in folder.iterdir() if (p / CFG).is_file()] if folder.is_dir() else []
    if len(subs) == 1:
        return subs[0]
    if not folder.exists():
        raise EmkitError(f"no SAE folder at {folder}")
    raise EmkitError(f"{folder} holds no {CFG}" + (f" (sub-folders with one: {[p.name for p in subs]})" if subs else ""),
                     hint="give the folder holding cfg.json and sae.safetensors, or pass the hook name")


def read_cfg(folder: str | Path, hook: str | None = None) -> tuple[Path, SaeConfig]:
    path = _find(Path(folder), hook)
    try:
        raw = json.loads((path / CFG).read_text())
    except json.JSONDecodeError as e:
        raise EmkitError(f"{path / CFG} is not valid JSON: {e}") from None
    if raw.get("activation", "topk") != "topk" or raw.get("skip_connection") or raw.get("transcode"):
        raise EmkitError(f"{path} is not a plain top-k SAE (activation/skip_connection/transcode)",
                         hint="emkit reads top-k autoencoders without skip connections")
    try:
        d_in = int(raw["d_in"])
        n = int(raw.get("num_latents") or 0) or d_in * int(raw["expansion_factor"])
        cfg = SaeConfig(d_in=d_in, num_latents=n, k=int(raw["k"]), hook=str(raw.get("hook") or ""),
                        layer=int(raw.get("layer", -1)), model=str(raw.get("model") or ""),
                        corpus=str(raw.get("corpus") or ""), meta=dict(raw.get("meta") or {}))
    except (KeyError, TypeError, ValueError) as e:
        raise EmkitError(f"{path / CFG} lacks or mistypes a field: {e}") from None
    return path, cfg


def read_sae(folder: str | Path, hook: str | None = None) -> tuple[Path, SaeConfig, dict[str, torch.Tensor]]:
    """(weights file, config, tensors) of an SAE folder, each of :data:`TENSORS` present; the model checks shapes."""
    path, cfg = read_cfg(folder, hook)
    if not (path / WEIGHTS).is_file():
        raise EmkitError(f"{path / WEIGHTS} is missing")
    tensors = load_file(str(path / WEIGHTS))
    missing = [k for k in TENSORS if k not in tensors]
    if missing:
        raise EmkitError(f"{path / WEIGHTS} lacks tensors {missing}")
    return path / WEIGHTS, cfg, tensors
