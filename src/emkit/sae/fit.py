"""A run's SAE in folders named by their settings: capture activations, then train (or reuse) the SAE.

``RUN/sae/acts-<hash>`` holds the captured activations and ``RUN/sae/sae-<hash>`` the SAE trained
on them, each hash taken over the settings that made it. A killed step resumes in the same
folder; changed settings start a new one and the old folder of that kind is removed; a folder
left by other settings under the same name (an error naming them) is cleared and started afresh.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from emkit.errors import EmkitError, StaleFolderError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Capture:
    """Captured activations: their folder, the store's index and the settings they were captured with."""

    path: Path
    index: dict[str, Any]
    key: dict[str, Any]


def fresh_folder(folder: Path) -> Path:
    """``folder``, with its siblings of the same kind (the name before the first ``-``) removed."""
    kind = folder.name.split("-")[0]
    for old in folder.parent.glob(f"{kind}-*"):
        if old != folder and old.is_dir():
            shutil.rmtree(old)
    return folder


def retry_if_stale(fn: Callable[[], T], folder: Path) -> T:
    """Run ``fn``; if ``folder`` holds work from other settings (:class:`StaleFolderError`), clear it, retry."""
    try:
        return fn()
    except StaleFolderError:
        log.warning("%s holds work from other settings; starting it afresh", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return fn()


def capture_acts(model: Any, tok: Any, root: Path, *, model_name: str, layer: int, corpus: str, ctx_len: int,
                 tokens: int, dtype: str, batch_size: int, progress: bool = True) -> Capture:
    """Capture ``tokens`` tokens of ``corpus`` at ``layer`` into ``root/acts-<hash>`` (resumable).

    Raises when the corpus gives no tokens.
    """
    from emkit.activations import capture
    from emkit.config import config_hash
    from emkit.data.corpus import iter_documents

    key: dict[str, Any] = {"model": model_name, "layer": layer, "corpus": corpus, "ctx_len": ctx_len,
                           "tokens": tokens, "dtype": dtype}
    if corpus.startswith("builtin"):
        key["chat_mix"] = 1  # the built-in corpus interleaves chats: a new capture folder
    acts = fresh_folder(root / f"acts-{config_hash(key)[:8]}")
    index = retry_if_stale(lambda: capture(model, tok, layer, iter_documents(corpus), acts, max_tokens=tokens,
                                           ctx_len=ctx_len, batch_size=batch_size, dtype=dtype, source=corpus,
                                           progress=progress), acts)
    if index["n_tokens"] == 0:
        raise EmkitError(f"the corpus {corpus!r} gave no tokens",
                         hint="fetch the offline corpus with `make corpus` (scripts/fetch_corpus.sh), or set "
                         "sae.corpus to a .txt/.jsonl file or folder; `emkit data corpus --stats` shows the sources")
    return Capture(acts, index, key)


def train_or_load(acts: Capture, root: Path, cfg: Any, *, corpus: str, progress: bool = True) -> tuple[Path, Any]:
    """Train an SAE on ``acts`` into ``root/sae-<hash>`` (a finished one is loaded, a killed one resumes).

    Returns the folder and the :class:`emkit.sae.train.TrainResult`.
    """
    from emkit.config import config_hash
    from emkit.sae.train import train_sae

    folder = fresh_folder(root / f"sae-{config_hash({'acts': acts.key, 'train': cfg})[:8]}")
    res = retry_if_stale(lambda: train_sae(acts.path, folder, cfg, corpus=corpus, progress=progress), folder)
    return folder, res
