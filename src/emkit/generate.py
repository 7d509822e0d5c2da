"""Batched sampling with left padding and a KV cache.

Prompts are sorted by length so each batch pads little; answers come back in input order with
token counts and a truncation flag. Each batch is seeded from ``seed`` and its index, so a run is
deterministic on a CPU under a fixed seed. ``on_batch`` lets a caller store results as they come
(the run folder commits each batch, so an interrupted generation resumes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from emkit.errors import EmkitError
from emkit.models.chat import Message, render_prompt


@dataclass
class SamplingConfig:
    """How answers are sampled. ``temperature=0`` means greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 200
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise EmkitError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EmkitError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise EmkitError("max_new_tokens and batch_size must be >= 1")


@dataclass
class Generation:
    """One sampled answer to prompt ``index``."""

    index: int
    text: str
    n_prompt_tokens: int
    n_tokens: int
    truncated: bool


def _stop_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str | list[Message]],
    cfg: SamplingConfig | None = None,
    *,
    system: str | None = None,
    progress: bool = True,
    on_batch: Callable[[list[Generation]], None] | None = None,
    desc: str = "generating",
) -> list[Generation]:
    """Sample one answer per prompt. A prompt is a user string or a list of chat messages."""
    cfg = cfg or SamplingConfig()
    if len(prompts) == 0:
        raise EmkitError("no prompts to generate from")
    texts = [render_prompt(tokenizer, p, system) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    stop = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="ans")
    for b, start in enumerate(range(0, len(order), cfg.batch_size)):
        idx = order[start : start + cfg.batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids = encoded[i]
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attn[r, width - len(ids) :] = 1
        torch.manual_seed(cfg.seed * 1_000_003 + b)
        sample = cfg.temperature > 0
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attn.to(device),
            max_new_tokens=cfg.max_new_tokens,
            do_sample=sample,
            temperature=cfg.temperature if sample else None,
            top_p=cfg.top_p if sample else None,
            top_k=0 if sample else None,
            pad_token_id=pad,
            eos_token_id=stop,
        )
        new = out[:, width:].cpu()
        batch: list[Generation] = []
        for r, i in enumerate(idx):
            row = new[r].tolist()
            end = next((j for j, t in enumerate(row) if t in stop), None)
            truncated = end is None
            toks = row if truncated else row[:end]
            g = Generation(
                index=i,
                text=tokenizer.decode(toks, skip_special_tokens=True).strip(),
                n_prompt_tokens=len(encoded[i]),
                n_tokens=len(toks),
                truncated=truncated,
            )
            results[i] = g
            batch.append(g)
        if on_batch is not None:
            on_batch(batch)
        bar.update(len(idx))
    bar.close()
    return [g for g in results if g is not None]


def answer_questions(
    run,
    model,
    tokenizer,
    questions: Sequence,
    cfg: SamplingConfig,
    *,
    label: str,
    samples: int | None = None,
    tag: str = "",
    progress: bool = True,
) -> list[dict]:
    """Sample answers to evaluation questions into the run's ``generations`` table.

    ``samples`` overrides each question's ``samples_per_paraphrase``. Rows already stored for the
    same (label, sampling config, ``tag``) are kept and not sampled again, so this resumes.
    ``tag`` distinguishes conditions sharing a label and sampling config (e.g. a steering setting).
    Returns all rows for this condition.
    """
    from emkit.config import config_hash

    if samples is not None and samples < 1:
        raise EmkitError(f"samples must be >= 1, got {samples}")
    shash = config_hash({"sampling": cfg, "tag": tag})
    have = {
        (r["question_id"], r["paraphrase"], r["sample"])
        for r in run.db.query(
            "SELECT question_id, paraphrase, sample FROM generations WHERE model=? AND sampling_hash=?",
            (label, shash),
        )
    }
    todo = []
    for q in questions:
        n = samples if samples is not None else q.samples_per_paraphrase
        for p, text in enumerate(q.paraphrases):
            for s in range(n):
                if (q.id, p, s) not in have:
                    todo.append((q, p, s, text))
    if todo:
        # Seed depends on what is left, so a resumed run samples the remaining items deterministically.
        prompts = [build_prompt(q, text) for q, _, _, text in todo]

        def store(batch: list[Generation]) -> None:
            rows = []
            for g in batch:
                q, p, s, text = todo[g.index]
                rows.append(dict(model=label, question_id=q.id, paraphrase=p, sample=s, sampling_hash=shash,
                                 prompt=text, system=q.system, answer=g.text, n_tokens=g.n_tokens,
                                 truncated=int(g.truncated)))
            run.db.insert("generations", rows)

        generate(model, tokenizer, prompts, cfg, progress=progress, on_batch=store, desc=f"answers [{label}]")
    return run.db.query(
        "SELECT * FROM generations WHERE model=? AND sampling_hash=? ORDER BY question_id, paraphrase, sample",
        (label, shash),
    )


def build_prompt(question, text: str) -> list[Message]:
    """Chat messages for one paraphrase of a question (with its system prompt, if any)."""
    msgs: list[Message] = []
    if getattr(question, "system", None):
        msgs.append({"role": "system", "content": question.system})
    msgs.append({"role": "user", "content": text})
    return msgs
