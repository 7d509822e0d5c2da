"""Quiet offline runs: switch Hugging Face's offline mode on while only local models are in use.

A local folder or the bundled model needs no network, yet transformers and PEFT still look a few
things up on the Hub (PEFT checks the base model's ``config.json`` whenever it saves an adapter),
and without network each lookup prints a warning ("Name or service not known"). ``use_for(spec)``,
called for every model spec emkit resolves, turns ``HF_HUB_OFFLINE`` on for a local spec and off
again for a Hub id, so a Hub id still downloads for users with network. A value the user set in
``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is never overridden.
"""

from __future__ import annotations

import os
import sys
import warnings

ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Whether the user chose a mode themselves (read once, when emkit is first imported).
USER_CHOSE = any(os.environ.get(v) for v in ENV_VARS)
_state: dict[str, bool] = {"ours": False}

# With the Hub out of reach PEFT cannot check a base named by an id (e.g. ``smollm2-135m-instruct``)
# and says it assumes the vocabulary was not resized, which emkit never does: noise, not a finding.
_PEFT_NOTICE = r"Could not find a config file in .* will assume that the vocabulary was not modified"


def _set(on: bool) -> None:
    if on:
        os.environ["HF_HUB_OFFLINE"] = "1"
    else:
        os.environ.pop("HF_HUB_OFFLINE", None)
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:  # already imported: its flag was read at import time
        hub.HF_HUB_OFFLINE = on
    ds = sys.modules.get("datasets.config")
    if ds is not None and not os.environ.get("HF_DATASETS_OFFLINE"):  # `datasets` keeps a copy
        ds.HF_HUB_OFFLINE = on
    _state["ours"] = on


def is_offline() -> bool:
    """Whether Hugging Face libraries are in offline mode now (by the user's choice or emkit's)."""
    if USER_CHOSE:
        return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ENV_VARS)
    return _state["ours"]


def use_for(local: bool) -> None:
    """Go offline for a local model spec, back online for a Hub id (unless the user chose a mode)."""
    if not USER_CHOSE:
        if local and not _state["ours"]:
            _set(True)
        elif not local and _state["ours"]:
            _set(False)
    if local and is_offline():
        warnings.filterwarnings("ignore", message=_PEFT_NOTICE, category=UserWarning)
