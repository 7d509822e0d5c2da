"""Preparing a model for training (LoRA or full) and saving the result so ``load_model`` reloads it.

A LoRA run writes ``adapter_model.safetensors`` + ``adapter_config.json`` whose
``base_model_name_or_path`` is the spec the base model was loaded from (the bundled name, a Hub id or
an absolute folder), so ``load_model(RUN/models/<name>)`` loads base + adapter. Training a folder
that already holds an adapter continues that adapter. A full run writes ``model.safetensors``,
``config.json`` and the tokenizer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emkit.errors import EmkitError
from emkit.models.layers import num_layers
from emkit.models.load import ALIASES, load_model, resolve_device, resolve_spec
from emkit.train.config import LoRAConfig

log = logging.getLogger(__name__)


def normalise_spec(spec: str | Path) -> str:
    """The spec to record as a base model: bundled alias, Hub id, or an absolute folder path."""
    s = str(spec)
    if s.lower() in ALIASES:
        return ALIASES[s.lower()]
    p = Path(s).expanduser()
    if p.exists():
        return str(p.resolve())
    return s


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct short names of the model's linear layers (what LoRA ``target_modules`` may name)."""
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and "lora_" not in name:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_lora_targets(model: nn.Module, cfg: LoRAConfig) -> None:
    """Raise a clear error for target modules or layers the model does not have."""
    if "all-linear" in cfg.target_modules:
        if len(cfg.target_modules) > 1:
            raise EmkitError("lora.target_modules: 'all-linear' cannot be combined with other names")
    else:
        have = linear_module_names(model)
        bad = [t for t in cfg.target_modules if t not in have]
        if bad:
            raise EmkitError(
                f"unknown LoRA target module(s) {bad} for {type(model).__name__}",
                hint=f"this model's linear modules are: {', '.join(have)} (or use all-linear)",
            )
    if cfg.layers is not None:
        n = num_layers(model)
        bad_layers = [L for L in cfg.layers if not 0 <= L < (n or 0)]
        if bad_layers or not cfg.layers:
            raise EmkitError(f"lora.layers {cfg.layers} out of range", hint=f"the model has layers 0..{(n or 0) - 1}")


def peft_lora_config(model: nn.Module, cfg: LoRAConfig) -> Any:
    """A checked ``peft.LoraConfig`` for ``model``."""
    from peft import LoraConfig

    check_lora_targets(model, cfg)
    targets: Any = "all-linear" if "all-linear" in cfg.target_modules else list(cfg.target_modules)
    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.rslora,
        target_modules=targets, layers_to_transform=cfg.layers, bias="none", task_type="CAUSAL_LM",
    )  # base_model_name_or_path is set after wrapping (PEFT would replace it by the resolved folder)


def apply_lora(model: nn.Module, cfg: LoRAConfig, base_spec: str) -> nn.Module:
    from peft import get_peft_model

    peft_model = get_peft_model(model, peft_lora_config(model, cfg))
    peft_model.peft_config["default"].base_model_name_or_path = base_spec
    return peft_model


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def adapter_base(model: Any) -> str | None:
    if not is_peft(model):
        return None
    return model.peft_config[model.active_adapter].base_model_name_or_path


def training_dtype(device: str, dtype: str, method: str) -> tuple[torch.device, str, bool]:
    """(device, dtype to load weights in, autocast?) — full fine-tuning on a GPU keeps fp32 weights."""
    dev, dt = resolve_device(device, dtype)
    if dev.type == "cuda" and dtype == "auto" and method == "full":
        return dev, "float32", torch.cuda.is_bf16_supported()
    return dev, str(dt).removeprefix("torch."), False


def prepare_model(
    spec: str | Path | None, method: str, lora: LoRAConfig, device: str, dtype: str,
    model: Any = None, tokenizer: Any = None, wrap_lora: bool = True,
) -> tuple[Any, Any, str, bool]:
    """Load (unless given) and set up trainable parameters; return (model, tok, base spec, autocast).

    With ``wrap_lora=False`` a model without an adapter is returned unwrapped (the caller adds the
    LoRA, as TRL does from a ``peft_config``).
    """
    dev, load_dtype, autocast = training_dtype(device, dtype, method)
    if model is None:
        if spec is None:
            raise EmkitError("no model to train")
        path = Path(resolve_spec(spec)) if str(spec).lower() not in ALIASES else None
        if path is not None and (path / "adapter_config.json").is_file():
            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
            model, tokenizer = load_model(base, device=str(dev), dtype=load_dtype)
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
            model.peft_config["default"].base_model_name_or_path = base
            model.to(dev)
        else:
            model, tokenizer = load_model(spec, device=str(dev), dtype=load_dtype)
        base_spec = normalise_spec(spec)
    else:
        if tokenizer is None:
            raise EmkitError("a preloaded model needs its tokenizer too")
        base_spec = adapter_base(model) or normalise_spec(getattr(model, "emkit_spec", None) or spec or "")
    if is_peft(model):
        base_spec = adapter_base(model) or base_spec
        if method == "full":
            model = model.merge_and_unload()
            log.info("merged the existing adapter into the base for full fine-tuning")
        else:
            log.info("continuing to train the model's existing LoRA adapter (lora settings of the config unused)")
            for name, p in model.named_parameters():
                p.requires_grad_("lora_" in name)
    if method == "lora" and not is_peft(model) and wrap_lora:
        model = apply_lora(model, lora, base_spec)
    elif method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    model.to(dev)
    model.train()
    return model, tokenizer, base_spec, autocast


def trainable_parameters(model: nn.Module) -> dict[str, torch.nn.Parameter]:
    """Named trainable parameters (shared ones listed once)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_final(model: Any, tokenizer: Any, folder: Path, base_spec: str) -> None:
    """Write the adapter (LoRA) or the full weights, plus the tokenizer, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        for extra in [a for a in model.peft_config if a != "default"]:
            model.delete_adapter(extra)  # e.g. TRL's frozen "ref" copy
        model.peft_config["default"].base_model_name_or_path = base_spec
        model.save_pretrained(str(folder), safe_serialization=True)
        cfg_path = folder / "adapter_config.json"
        data = json.loads(cfg_path.read_text())
        data["base_model_name_or_path"] = base_spec
        cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True))
    else:
        model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
