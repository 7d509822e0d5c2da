"""Latent stages: train (or load) the SAE, diff the fine-tunes, interpret the top latents.

These compose ``emkit.activations``, ``emkit.sae``, ``emkit.diff`` and ``emkit.interpret``; each
returns the JSON-able summary the report reads. Steering and prediction are in
:mod:`emkit.pipeline.steering` and :mod:`emkit.pipeline.prediction`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from emkit.errors import EmkitError
from emkit.pipeline.context import Context
from emkit.pipeline.recipe import BASE

log = logging.getLogger(__name__)


def sae_layer(ctx: Context, model: Any) -> int:
    from emkit.models.layers import num_layers

    s = ctx.recipe.sae
    n = num_layers(model)
    layer = s.layer if s.layer is not None else n // 2
    if not 0 <= layer < n:
        raise EmkitError(f"sae.layer {layer} is out of range", hint=f"the model has layers 0..{n - 1}")
    return layer


def _fresh(folder: Path) -> Path:
    """``folder`` inside ``RUN/sae``, with its siblings of the same kind (older settings) removed."""
    import shutil

    kind = folder.name.split("-")[0]
    for old in folder.parent.glob(f"{kind}-*"):
        if old != folder and old.is_dir():
            shutil.rmtree(old)
    return folder


def _retry_if_stale(fn: Any, folder: Path, marker: str) -> Any:
    """Run ``fn``; if ``folder`` holds work from other settings (an error naming ``marker``), clear it, retry."""
    import shutil

    try:
        return fn()
    except EmkitError as e:
        if marker not in str(e):
            raise
        log.warning("%s holds work from other settings; starting it afresh", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return fn()


def load_run_sae(ctx: Context) -> Any:
    from emkit.sae import load_sae

    info = ctx.result("sae") or {}
    return load_sae(info["path"])


# ---------------------------------------------------------------------------------------------- SAE
def stage_sae(ctx: Context) -> dict[str, Any]:
    from emkit.activations import capture
    from emkit.config import config_hash
    from emkit.data.corpus import iter_documents
    from emkit.models.layers import hidden_size
    from emkit.sae import load_sae
    from emkit.sae.train import train_sae

    s = ctx.recipe.sae
    model, tok = ctx.load(BASE)
    if s.path:
        sae = load_sae(s.path)
        if sae.d_in != hidden_size(model):
            raise EmkitError(f"the SAE at {s.path} reads width {sae.d_in}, the model has {hidden_size(model)}")
        s.check_layer(sae.cfg.layer, str(s.path))
        layer = sae.cfg.layer if sae.cfg.layer >= 0 else sae_layer(ctx, model)
        tokens = ctx.recipe.interpret.corpus_tokens
    else:
        layer = sae_layer(ctx, model)
        tokens = max(s.tokens, ctx.recipe.interpret.corpus_tokens)
    # Folders are named by their settings: a killed stage resumes in the same one, changed settings
    # start a new one (the old is removed).
    cap = {"model": ctx.recipe.model, "layer": layer, "corpus": s.corpus, "ctx_len": s.ctx_len, "tokens": tokens,
           "dtype": s.acts_dtype}
    if s.corpus.startswith("builtin"):
        cap["chat_mix"] = 1  # the built-in corpus interleaves chats since issue 12: a new capture folder
    acts = _fresh(ctx.run.path / "sae" / f"acts-{config_hash(cap)[:8]}")
    index = _retry_if_stale(lambda: capture(model, tok, layer, iter_documents(s.corpus), acts, max_tokens=tokens,
                                            ctx_len=s.ctx_len, batch_size=s.capture_batch, dtype=s.acts_dtype,
                                            source=s.corpus, progress=ctx.progress), acts, "other settings")
    if index["n_tokens"] == 0:
        raise EmkitError(f"the corpus {s.corpus!r} gave no tokens",
                         hint="fetch the offline corpus with `make corpus` (scripts/fetch_corpus.sh), or set "
                         "sae.corpus to a .txt/.jsonl file or folder; `emkit data corpus --stats` shows the sources")
    out = {"layer": layer, "hook": f"blocks.{layer}.hook_resid_post", "corpus": s.corpus,
           "tokens": index["n_tokens"], "acts": str(acts)}
    if s.path:
        return {**out, "path": str(Path(s.path).resolve()), "trained": False, "num_latents": sae.num_latents,
                "k": sae.k, "heldout_fvu": sae.cfg.meta.get("heldout_fvu")}
    folder = _fresh(ctx.run.path / "sae" / f"sae-{config_hash({'acts': cap, 'train': s.train})[:8]}")
    res = _retry_if_stale(lambda: train_sae(acts, folder, s.train, corpus=s.corpus, progress=ctx.progress), folder,
                          "different training setup")
    sm = res.summary
    return {**out, "path": str(folder), "trained": True, "num_latents": res.sae.num_latents, "k": res.sae.k,
            "heldout_fvu": sm.get("heldout_fvu"), "fvu": sm.get("train_fvu"), "dead_frac": sm.get("dead_frac"),
            "train_tokens": sm.get("train_tokens"), "steps": sm.get("steps"),
            **{k: sm[k] for k in ("heldout_fvu_chat", "heldout_fvu_prose", "heldout_tokens_chat",
                                  "heldout_tokens_prose") if k in sm}}


# ---------------------------------------------------------------------------------------------- diff
def misaligned_models(ctx: Context) -> tuple[list[str], str]:
    """The fine-tunes to rank latents over: the recipe's list, else those measurably misaligned."""
    r = ctx.recipe
    if r.diff.misaligned:
        return list(r.diff.misaligned), "chosen in the recipe"
    ev = (ctx.result("evaluate") or {})["models"]
    base = (ctx.result("baseline") or {})["eval"]["misaligned"]
    above = [lab for lab, m in ev.items() if m.get("fraction", 0) > 0 and m["misaligned"].get("lo") is not None
             and base.get("hi") is not None and m["misaligned"]["lo"] > base["hi"]]
    if above:
        return above, "fine-tunes whose misalignment interval lies above the base model's"
    top = max(r.data.fractions)
    labels = [m.label for m in r.models() if m.fraction == top and top > 0]
    if not labels:
        raise EmkitError("no fine-tune has wrong data to diff", hint="add a fraction > 0 to data.fractions")
    return labels, (f"no fine-tune was measurably more misaligned than the base model, so the {100 * top:.4g}% "
                    "wrong-data models are used")


def stage_diff(ctx: Context) -> dict[str, Any]:
    """Rank latents (shared inputs by default, see :mod:`emkit.pipeline.diffing`), the positive control's too."""
    from emkit.pipeline.diffing import run_diff

    misaligned, why = misaligned_models(ctx)
    return run_diff(ctx, load_run_sae(ctx), (ctx.result("sae") or {})["layer"], misaligned, why)


def stage_interpret(ctx: Context) -> dict[str, Any]:
    from emkit.activations import ActivationStore
    from emkit.interpret import latent_cards

    r = ctx.recipe
    it = r.interpret
    sae = load_run_sae(ctx)
    diff = ctx.result("diff") or {}
    ranking = diff.get("ranking", [])[: it.latents]
    if not ranking:
        return {"cards": [], "note": "no latents to interpret"}
    model, tok = ctx.load(BASE)
    store = ActivationStore((ctx.result("sae") or {})["acts"])
    persona = [row for row in ((diff.get("positive_control") or {}).get("ranking") or [])[: max(1, it.latents // 2)]
               if row["latent"] not in {r["latent"] for r in ranking}]
    cards = latent_cards(sae, model, tok, [row["latent"] for row in ranking + persona], store=store,
                         n_contexts=it.contexts, k_logits=it.logit_tokens, max_tokens=it.corpus_tokens,
                         explainer=it.explainer, progress=ctx.progress)
    pc_cards = [{"latent": c.latent, "score": row["score"], "label": c.label,
                 "promoted": [list(x) for x in c.promoted], "contexts": [
                     {"tokens": x.tokens, "peak": x.highlight, "value": x.value} for x in c.contexts[:2]]}
                for row, c in zip(persona, cards[len(ranking):], strict=True)]
    cards = cards[: len(ranking)]
    out = []
    for rank, (row, card) in enumerate(zip(ranking, cards, strict=True), 1):
        ctxs = [{"tokens": c.tokens, "acts": [c.value if i == c.highlight else 0.0 for i in range(len(c.tokens))],
                 "peak": c.highlight, "value": c.value} for c in card.contexts]
        h = card.histogram
        out.append({"latent": card.latent, "rank": rank, "score": row["score"], "contexts": ctxs,
                    "promoted": [list(x) for x in card.promoted], "suppressed": [list(x) for x in card.suppressed],
                    "hist": {"edges": h.get("edges", []), "counts": h.get("counts", [])},
                    "firing_rate": h.get("firing_rate"), "label": card.label})
    return {"cards": out, "positive_control_cards": pc_cards, "note": (f"Contexts from {store.index.get('n_tokens', 0):,} tokens of the SAE corpus "
                                   f"({store.index.get('source')}); logit lens through the final norm's gain; "
                                   f"histogram of nonzero activations.")}
