"""``load_model(spec) -> (model, tokenizer)`` for a local folder, a Hub id, or the bundled model.

Weights load with safetensors only, and ``trust_remote_code`` is off unless asked for. A folder
holding a PEFT adapter (``adapter_config.json``) loads its base model first, then the adapter.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from emkit.errors import EmkitError
from emkit.models import bundled, offline
from emkit.models.chat import ensure_chat_template

log = logging.getLogger(__name__)

BUNDLED = bundled.NAME
ALIASES = {BUNDLED: BUNDLED, "smollm2": BUNDLED, "bundled": BUNDLED}


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto`` picks CUDA + bf16 when present, else CPU + fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = _check_device(device)
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        try:
            dt = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                  "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise EmkitError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16") from None
    return dev, dt


def _check_device(device: str) -> torch.device:
    """A torch device that exists here, or a one-line error saying which ones do."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise EmkitError(f"unknown device {device!r}", hint="use auto, cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise EmkitError(f"--device {device}: no CUDA GPU is available here", hint="use --device cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise EmkitError(f"--device {device}: this machine has {n} CUDA GPU(s)", hint=f"use cuda:0 .. cuda:{n - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise EmkitError(f"--device {device}: MPS is not available here", hint="use --device cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise EmkitError(f"unsupported device {device!r}", hint="use auto, cpu, cuda, cuda:1 or mps")
    return dev


def _load_error(what: str, spec: Any, e: Exception) -> EmkitError:
    """A one-line error for a model or tokenizer that transformers could not load."""
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    if type(e).__name__ == "SafetensorError" or "safetensors" in type(e).__module__:
        return EmkitError(f"could not load {what} {str(spec)!r}: a *.safetensors file is damaged or truncated ({first})",
                          hint="copy or download the weights again")
    if "does not recognize this architecture" in first or isinstance(e, KeyError):
        return EmkitError(f"could not load {what} {str(spec)!r}: {first[:300]}",
                          hint="check model_type in config.json, or upgrade transformers")
    return EmkitError(f"could not load {what} {str(spec)!r}: {type(e).__name__}: {first[:300]}")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()


def resolve_spec(spec: str | Path) -> str:
    """Turn a spec into a folder path or Hub id, converting the bundled model on first use."""
    s = str(spec)
    if s.lower() in ALIASES:
        offline.use_for(local=True)  # no Hub lookups (and no warnings about them) for local models
        return str(bundled.path())
    if _looks_like_path(s):
        offline.use_for(local=True)
        p = Path(s).expanduser()
        if not p.exists():
            raise EmkitError(f"model path does not exist: {p}", hint="give a folder with config.json and *.safetensors")
        if not p.is_dir():
            raise EmkitError(f"model path is not a folder: {p}")
        if (p / "adapter_config.json").is_file():
            return str(p)
        if not (p / "config.json").is_file():
            raise EmkitError(f"{p} has no config.json", hint="is this a Hugging Face model folder?")
        if not any(p.glob("*.safetensors")):
            if any(p.glob("*.bin")) or any(p.glob("*.pt")):
                raise EmkitError(
                    f"{p} holds only pickle weights (*.bin/*.pt); emkit loads safetensors only",
                    hint="convert them once with `model.save_pretrained(dir, safe_serialization=True)`",
                )
            raise EmkitError(f"{p} has no weights (*.safetensors)")
        return str(p)
    if s.count("/") == 1 and not s.endswith("/"):
        offline.use_for(local=False)
        check_hub_reachable(s)
        return s  # a Hub id: works when the user has network access or a local HF cache
    raise EmkitError(
        f"cannot find model {s!r}",
        hint=f"give a local folder, a Hub id like org/name, or '{BUNDLED}'",
    )


def _in_hf_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def _hub_answers(timeout: float) -> bool:
    """One short TCP probe of the Hub endpoint (``$HF_ENDPOINT``, default huggingface.co), once per endpoint."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    key = f"{u.hostname}:{u.port}"
    if key not in _PROBED:
        try:
            with socket.create_connection((u.hostname or "huggingface.co", u.port or 443), timeout=timeout):
                _PROBED[key] = True
        except OSError:
            _PROBED[key] = False
    return _PROBED[key]


_PROBED: dict[str, bool] = {}


def check_hub_reachable(repo: str, timeout: float = 3.0) -> None:
    """Fail at once for a Hub id that is neither in the local HF cache nor reachable (instead of
    retrying for a minute); a cached model without network is read from the cache, offline."""
    if _in_hf_cache(repo):
        if not offline.is_offline() and not _hub_answers(timeout):
            import sys

            os.environ["HF_HUB_OFFLINE"] = "1"  # use the cache without retrying the network
            hub = sys.modules.get("huggingface_hub.constants")
            if hub is not None:
                hub.HF_HUB_OFFLINE = True
        return
    if offline.is_offline():
        raise EmkitError(f"model {repo!r} is not in the local Hugging Face cache and offline mode is on "
                         "(HF_HUB_OFFLINE)", hint="download it where there is network, or give a local folder")
    if not _hub_answers(timeout):
        raise EmkitError(f"cannot reach the Hugging Face Hub to download {repo!r} (no network?)",
                         hint="give a local model folder, or connect and try again")


def load_tokenizer(spec: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_spec(spec)
    adapter_cfg = Path(path) / "adapter_config.json"
    if adapter_cfg.is_file() and not (Path(path) / "tokenizer_config.json").is_file():
        path = resolve_spec(json.loads(adapter_cfg.read_text())["base_model_name_or_path"])
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        err = _load_error("the tokenizer of", spec, e)
        raise EmkitError(err.message, hint="the folder needs tokenizer.json (or the files of a slow tokenizer) and "
                         "tokenizer_config.json") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ensure_chat_template(tok)
    return tok


def load_model(
    spec: str | Path,
    *,
    adapter: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    merge_adapter: bool = False,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``; ``spec`` is a folder, a Hub id or ``smollm2-135m-instruct``."""
    from transformers import AutoModelForCausalLM

    path = resolve_spec(spec)
    if (Path(path) / "adapter_config.json").is_file():
        if adapter is not None:
            raise EmkitError(f"{path} is itself an adapter; give its base as the model")
        adapter = path
        path = resolve_spec(json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"])
    dev, dt = resolve_device(device, dtype)
    tok = load_tokenizer(path, trust_remote_code=trust_remote_code)  # first: cheap, and fails before the weights
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dt, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except Exception as e:  # noqa: BLE001 - OSError, ValueError (architecture), SafetensorError, ...
        raise _load_error("model", spec, e) from None
    if adapter is not None:
        from peft import PeftModel

        apath = Path(adapter)
        if not (apath / "adapter_config.json").is_file():
            raise EmkitError(f"no PEFT adapter at {apath} (adapter_config.json missing)")
        model = PeftModel.from_pretrained(model, str(apath))
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(dev)
    model.eval()
    model.emkit_spec = str(spec) if adapter is None else f"{spec}+{adapter}"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def model_id(model: Any) -> str:
    """A readable id for manifests: the spec it was loaded from, else its name_or_path."""
    return getattr(model, "emkit_spec", None) or getattr(model.config, "name_or_path", "model")


def as_loaded(spec: Any) -> tuple[Any, Any]:
    """A ``(model, tokenizer)`` from a pair, a function returning one, or a spec for :func:`load_model`."""
    if isinstance(spec, tuple):
        return spec
    if callable(spec):
        return spec()
    return load_model(spec)
