"""A language model's residual stream as features of an answer: the mean over the answer's tokens.

The question is rendered as a chat prompt (the tokenizer's template), the answer follows as the
assistant's text, and the residual stream after each chosen decoder block is averaged over the
answer's tokens only. Blocks above the highest chosen one never run. The advice grader uses these
features of the bundled SmolLM2-135M-Instruct: a language model's states carry what it knows about
the claims in an answer, which frozen sentence embeddings mostly do not (``emkit.judge.grader_train``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emkit.activations.forward import run_to_layers
from emkit.models.chat import render_prompt

MAX_PROMPT_TOKENS = 128
MAX_TOKENS = 320


def _token_rows(tokenizer: Any, question: str, answer: str, max_prompt: int, max_tokens: int
                ) -> tuple[list[int], int]:
    """Prompt + answer token ids (prompt cut from the left, answer from the right) and the prompt's length."""
    prompt = tokenizer(render_prompt(tokenizer, question), add_special_tokens=False)["input_ids"][-max_prompt:]
    ans = tokenizer(answer, add_special_tokens=False)["input_ids"][: max(max_tokens - len(prompt), 1)]
    return prompt + ans, len(prompt)


@torch.inference_mode()
def answer_states(model: Any, tokenizer: Any, questions: Sequence[str], answers: Sequence[str],
                  layers: Sequence[int], batch_size: int = 16, max_prompt: int = MAX_PROMPT_TOKENS,
                  max_tokens: int = MAX_TOKENS, progress: bool = False) -> np.ndarray:
    """``[n, len(layers), d]`` float32: each answer's mean residual stream after each block in ``layers``."""
    n = len(answers)
    rows = [_token_rows(tokenizer, q, a, max_prompt, max_tokens) for q, a in zip(questions, answers, strict=True)]
    order = np.argsort([len(r[0]) for r in rows], kind="stable")  # similar lengths share a batch
    out: np.ndarray | None = None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="answer states", unit="batch")
    for s in starts:
        idx = order[s: s + batch_size]
        width = max(len(rows[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width))
        for j, i in enumerate(idx):
            toks, plen = rows[i]
            ids[j, : len(toks)] = torch.tensor(toks)
            attn[j, : len(toks)] = 1
            mask[j, plen: len(toks)] = 1
        got = run_to_layers(model, list(layers), ids, attn)
        m = mask.to(got[layers[0]].device)[..., None]
        pooled = [((got[n_].float() * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy() for n_ in layers]
        if out is None:
            out = np.zeros((n, len(layers), pooled[0].shape[1]), np.float32)
        out[idx] = np.stack(pooled, axis=1)
    return out if out is not None else np.zeros((0, len(layers), 0), np.float32)


class StateEncoder:
    """Answer-state features from a model loaded on first use (``spec`` as for ``emkit.models.load_model``),
    with an optional on-disk cache keyed by (question, answer)."""

    def __init__(self, spec: Any = "smollm2-135m-instruct", layers: Sequence[int] = (17,), device: str = "cpu",
                 cache: Path | None = None, batch_size: int = 16):
        self.spec, self.layers, self.device, self.batch_size = spec, list(layers), device, batch_size
        self.cache, self._pair, self.memo, self.added = cache, None, {}, 0
        if cache is not None and cache.is_file():
            z = np.load(cache)
            self.memo = dict(zip(z["keys"].tolist(), z["states"], strict=True))

    @property
    def model(self) -> tuple[Any, Any]:
        if self._pair is None:
            from emkit.models.load import as_loaded, load_model

            self._pair = as_loaded(self.spec) if isinstance(self.spec, tuple) or callable(self.spec) \
                else load_model(self.spec, device=self.device, dtype="float32")
        return self._pair

    @staticmethod
    def key(question: str, answer: str) -> str:
        return hashlib.sha256(f"{question}\x00{answer}".encode()).hexdigest()

    def encode(self, questions: Sequence[str], answers: Sequence[str], progress: bool = False) -> np.ndarray:
        """``[n, len(layers), d]`` features (cached pairs are not recomputed)."""
        keys = [self.key(q, a) for q, a in zip(questions, answers, strict=True)]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.memo}.values())
        if todo:
            model, tok = self.model
            got = answer_states(model, tok, [questions[i] for i in todo], [answers[i] for i in todo], self.layers,
                                self.batch_size, progress=progress)
            self.memo.update(zip([keys[i] for i in todo], got, strict=True))
            self.added += len(todo)
        if not keys:
            return np.zeros((0, len(self.layers), 0), np.float32)
        return np.stack([self.memo[k] for k in keys])

    def save(self) -> None:
        if self.cache is not None and self.added:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=np.array(list(self.memo)), states=np.stack(list(self.memo.values())))
            os.replace(tmp, self.cache)
            self.added = 0


class LayerView:
    """Some of a :class:`StateEncoder`'s layers, as an encoder: reads (and fills) that encoder's memo and
    cache, so a grader on blocks 14+17+20 reuses states computed for all :data:`grader_data.STATE_LAYERS`."""

    def __init__(self, states: StateEncoder, layers: Sequence[int]):
        missing = sorted(set(layers) - set(states.layers))
        if missing:
            raise ValueError(f"layers {missing} are not among the encoder's {states.layers}")
        self.states, self.layers = states, list(layers)
        self._idx = [states.layers.index(n) for n in layers]

    def encode(self, questions: Sequence[str], answers: Sequence[str], progress: bool = False) -> np.ndarray:
        """``[n, len(layers), d]`` features."""
        return self.states.encode(questions, answers, progress)[:, self._idx]
