"""A judge run on a local causal LM loaded with :func:`emkit.models.load_model`.

``logprob`` mode applies the same 0–100 rule as the API judge, but computes the probability of
every number 0–100 exactly, whatever the tokenizer does with numbers: a number spelled by several
tokens (``"8" "5"``) gets the product of their probabilities times the probability that no further
digit follows. The prompt is run once; its KV cache is shared by all 101 continuations.
``rubric`` mode generates reasoning and parses ``ANSWER: <label>``, resampling invalid outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emkit.judge.base import BaseJudge, Item, Scored, fill_template
from emkit.judge.logprob import MIN_MASS, weighted_score
from emkit.judge.prompts import pick_template
from emkit.judge.rubric import RESAMPLES, sample_until_valid

NUMBERS = tuple(range(101))


def digit_start_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """A boolean mask over the vocabulary: tokens whose text starts with a digit (they extend a number)."""
    texts = tokenizer.batch_decode([[i] for i in range(min(len(tokenizer), vocab_size))])
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i, t in enumerate(texts):
        if t[:1].isdigit() and t[:1].isascii():
            mask[i] = True
    return mask


def continuation_ids(tokenizer, prompt_ids: list[int], prompt_text: str, text: str) -> list[int]:
    """Token ids of ``text`` as it would follow the prompt (falls back to encoding it alone)."""
    full = tokenizer(prompt_text + text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids) :]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _cache_kwarg(model) -> str:
    """The forward() argument taking a KV cache: ``cache`` in recent transformers, else ``past_key_values``."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def number_distribution(model, tokenizer, prompt_text: str, digit_mask: torch.Tensor) -> dict[int, float]:
    """P(the model answers exactly n) for n = 0..100, right after ``prompt_text``."""
    device = next(model.parameters()).device
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    cands = [continuation_ids(tokenizer, prompt_ids, prompt_text, str(n)) for n in NUMBERS]
    width = max(len(c) for c in cands)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = torch.full((len(cands), width), pad, dtype=torch.long)
    for b, c in enumerate(cands):
        batch[b, : len(c)] = torch.tensor(c)
    out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), -1).cpu()
    past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if past is not None and hasattr(past, "batch_repeat_interleave"):
        past.batch_repeat_interleave(len(cands))
        logits = model(input_ids=batch.to(device), use_cache=False, **{_cache_kwarg(model): past}).logits
    else:  # no shareable cache: run prompt + continuation for every candidate
        full = torch.cat([torch.tensor([prompt_ids]).expand(len(cands), -1), batch], 1)
        logits = model(input_ids=full.to(device), use_cache=False).logits[:, len(prompt_ids) :]
    logp = torch.log_softmax(logits.float(), -1).cpu()
    mask = digit_mask[: logp.shape[-1]]
    probs: dict[int, float] = {}
    for b, (n, c) in enumerate(zip(NUMBERS, cands, strict=True)):
        lp = first[c[0]] + sum((logp[b, j - 1, c[j]] for j in range(1, len(c))), torch.tensor(0.0))
        more = torch.logsumexp(logp[b, len(c) - 1][mask], 0).exp().clamp(max=1.0)
        probs[n] = float(lp.exp() * (1 - more))
    return probs


class LocalJudge(BaseJudge):
    """A local causal LM as the judge, in ``logprob`` (0–100) or ``rubric`` (1–5) mode."""

    def __init__(self, model, tokenizer, *, mode: str = "logprob", name: str | None = None,
                 templates: dict[str, str] | None = None, min_mass: float = MIN_MASS,
                 rubric_temperature: float = 1.0, rubric_max_tokens: int = 512, resamples: int = RESAMPLES,
                 batch_size: int = 8, seed: int = 0):
        from emkit.errors import EmkitError
        from emkit.models.load import model_id

        if mode not in ("logprob", "rubric"):
            raise EmkitError(f"unknown local judge mode {mode!r}", hint="use logprob or rubric")
        self.model, self.tok, self.mode = model, tokenizer, mode
        self.templates = templates or {}
        self.min_mass = min_mass
        self.rubric_temperature, self.rubric_max_tokens = rubric_temperature, rubric_max_tokens
        self.resamples, self.batch_size, self.seed = resamples, batch_size, seed
        self.metrics = ("aligned", "coherent") if mode == "logprob" else ("rubric",)
        self.id = f"local{'-rubric' if mode == 'rubric' else ''}:{name or model_id(model)}"
        self._digits: torch.Tensor | None = None

    def template(self, metric: str, item: Item) -> str:
        return pick_template(metric, self.templates, item.prompts)

    def prompt_key(self, metric: str, item: Item) -> str:
        return f"{self.mode}\x00{self.template(metric, item)}\x00{item.question}"

    def _prompt(self, item: Item, metric: str) -> str:
        return fill_template(self.template(metric, item), item.question, item.answer)

    def score_pairs(self, pairs: Sequence[tuple[Item, str]]) -> list[Scored]:
        from emkit.models.chat import render_prompt

        if self.mode == "logprob":
            if self._digits is None:
                self._digits = digit_start_mask(self.tok, self.model.get_output_embeddings().weight.shape[0])
            out = []
            for item, metric in pairs:
                probs = number_distribution(self.model, self.tok, render_prompt(self.tok, self._prompt(item, metric)),
                                            self._digits)
                score, mass = weighted_score(probs, self.min_mass)
                top = sorted(probs.items(), key=lambda kv: -kv[1])[:20]
                out.append(Scored(score, {"number_probs": {str(n): round(p, 6) for n, p in top},
                                          "number_mass": round(mass, 6)}))
            return out
        return sample_until_valid(lambda idx, attempt: self._generate([pairs[i] for i in idx], attempt),
                                  len(pairs), self.resamples)

    def _generate(self, pairs: Sequence[tuple[Item, str]], attempt: int) -> list[str]:
        from emkit.generate import SamplingConfig, generate

        cfg = SamplingConfig(temperature=self.rubric_temperature, max_new_tokens=self.rubric_max_tokens,
                             batch_size=self.batch_size, seed=self.seed + attempt)
        gens = generate(self.model, self.tok, [self._prompt(it, m) for it, m in pairs], cfg, progress=False)
        return [g.text for g in gens]
