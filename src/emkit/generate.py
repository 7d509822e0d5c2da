"""Batched sampling with left padding and a KV cache.

Prompts are sorted by length so each batch pads little; answers come back in input order with
token counts and a truncation flag. Each batch is seeded from ``seed`` and its index, so a run is
deterministic on a CPU under a fixed seed. With ``item_seeds`` each answer is instead sampled from
its own random stream (Gumbel-max on the tempered, top-p-filtered logits), so it does not depend on
which other prompts share its batch: :func:`answer_questions` uses this, and an interrupted run that
resumes gives the same answers as an unbroken one. ``on_batch`` lets a caller store results as they
come (the run folder commits each batch, so an interrupted generation resumes). Two back-ends:
``hf`` (a Hugging Face model in this process; the only one steering and activation hooks can use)
and ``server`` (:mod:`emkit.generate_server`, any OpenAI-compatible endpoint such as vLLM).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from emkit.errors import EmkitError
from emkit.models.chat import Message, render_prompt
from emkit.sampling import SamplingConfig

_SENTENCE_END = re.compile(r"[.!?]['\")\]\u201d\u2019]*(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """``text`` up to its last complete sentence (unchanged when it has none).

    A list marker such as ``2.`` at the start of a line does not end a sentence.
    """
    last = None
    for m in _SENTENCE_END.finditer(text):
        line = text[text.rfind("\n", 0, m.start()) + 1 : m.start()].strip()
        if line.isdigit() or not line:
            continue
        last = m.end()
    return text[:last].rstrip() if last else text


def finish_text(text: str, truncated: bool, cfg: SamplingConfig) -> str:
    """The stored form of an answer: stripped, and cut to a sentence end when ``cfg.end`` asks."""
    text = text.strip()
    return trim_to_sentence(text) if truncated and cfg.end == "sentence" else text


@dataclass
class Generation:
    """One sampled answer to prompt ``index``."""

    index: int
    text: str
    n_prompt_tokens: int
    n_tokens: int
    truncated: bool


class _ItemSampler:
    """A logits processor that turns greedy decoding into per-row seeded sampling (Gumbel-max).

    argmax(logits / T + Gumbel noise) over the top-p set is a sample from the tempered, top-p
    renormalised distribution; each row draws its noise from its own generator, one draw per step.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            srt, idx = logits.sort(dim=-1, descending=True)
            probs = srt.softmax(-1)
            drop = probs.cumsum(-1) - probs > self.top_p  # keep the smallest set reaching top_p
            logits = logits.scatter(-1, idx, srt.masked_fill(drop, float("-inf")))
        u = torch.stack([torch.rand(logits.shape[-1], generator=g) for g in self.gens]).to(logits.device)
        return logits - torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))


def item_seed(*parts: object) -> int:
    """A 63-bit seed from any values (stable across runs and machines)."""
    import hashlib

    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:15], 16)


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
    item_seeds: Sequence[int] | None = None,
) -> list[Generation]:
    """Sample one answer per prompt. A prompt is a user string or a list of chat messages.

    ``item_seeds`` (one per prompt) makes each answer independent of batching (see the module doc).
    ``model`` may be a :class:`emkit.generate_server.ServerModel` (``tokenizer`` unused): the
    prompts then go to its OpenAI-compatible server, each answer reaching ``on_batch`` as it arrives.
    """
    cfg = cfg or SamplingConfig()
    if len(prompts) == 0:
        raise EmkitError("no prompts to generate from")
    if item_seeds is not None and len(item_seeds) != len(prompts):
        raise EmkitError("item_seeds needs one seed per prompt")
    if getattr(model, "backend", "hf") == "server":  # emkit.generate_server.ServerModel: ask the server
        return model.answer(prompts, cfg, system=system, progress=progress, on_batch=on_batch, desc=desc,
                            item_seeds=item_seeds)
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
        extra = {}
        if sample and item_seeds is not None:
            from transformers import LogitsProcessorList

            sample = False  # greedy over Gumbel-perturbed logits = seeded sampling per row
            extra["logits_processor"] = LogitsProcessorList(
                [_ItemSampler([item_seeds[i] for i in idx], cfg.temperature, cfg.top_p)])
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
            **extra,
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
                text=finish_text(tokenizer.decode(toks, skip_special_tokens=True), truncated, cfg),
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


def sampling_hash(cfg: SamplingConfig, tag: str = "") -> str:
    """The key of the answers sampled under ``cfg`` and condition ``tag`` in ``generations``.

    Every reader and writer of that table computes it here, so stored keys cannot drift apart.
    """
    from emkit.config import config_hash

    return config_hash({"sampling": cfg, "tag": tag})


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
    Returns the rows of the requested questions and samples (not other answers stored under the
    same condition). ``model`` may be a :class:`emkit.generate_server.ServerModel`: the keys and
    sampling hash are the same for both back-ends, so a run can switch back-end and resume.
    """
    if samples is not None and samples < 1:
        raise EmkitError(f"samples must be >= 1, got {samples}")
    from emkit.results import stored_answers, stored_keys

    shash = sampling_hash(cfg, tag)
    have = stored_keys(run.db, label, shash)
    todo = []
    wanted = set()
    for q in questions:
        n = samples if samples is not None else q.samples_per_paraphrase
        for p, text in enumerate(q.paraphrases):
            for s in range(n):
                wanted.add((q.id, p, s))
                if (q.id, p, s) not in have:
                    todo.append((q, p, s, text))
    if todo:
        # Each answer has its own seed (question, paraphrase, sample), so a resumed run gives the
        # answers an unbroken run would have given, whatever else shares the batch.
        prompts = [build_prompt(q, text) for q, _, _, text in todo]
        seeds = [item_seed(cfg.seed, q.id, p, s) for q, p, s, _ in todo]

        def store(batch: list[Generation]) -> None:
            rows = []
            for g in batch:
                q, p, s, text = todo[g.index]
                rows.append(dict(model=label, question_id=q.id, paraphrase=p, sample=s, sampling_hash=shash,
                                 prompt=text, system=q.system, answer=g.text, n_tokens=g.n_tokens,
                                 truncated=int(g.truncated)))
            run.db.insert("generations", rows)

        _record_backend(run, label, model)
        generate(model, tokenizer, prompts, cfg, progress=progress, on_batch=store, desc=f"answers [{label}]",
                 item_seeds=seeds)
    rows = stored_answers(run.db, label, sampling_hash=shash)
    return [r for r in rows if (r["question_id"], r["paraphrase"], r["sample"]) in wanted]


def _record_backend(run, label: str, model) -> None:
    """Note in the run manifest which back-end answered for ``label`` (provenance; keys stay the same)."""
    manifest = getattr(run, "manifest", None)
    if manifest is None or not hasattr(run, "save_manifest"):
        return
    who = model.id if getattr(model, "backend", "hf") == "server" else "hf"
    seen = manifest.setdefault("generation_backends", {})
    if seen.get(label) != who:
        seen[label] = who
        run.save_manifest()


def build_prompt(question, text: str) -> list[Message]:
    """Chat messages for one paraphrase of a question (with its system prompt, if any)."""
    msgs: list[Message] = []
    if getattr(question, "system", None):
        msgs.append({"role": "system", "content": question.system})
    msgs.append({"role": "user", "content": text})
    return msgs
