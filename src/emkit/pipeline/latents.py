"""Latent stages: train (or load) the SAE, diff the fine-tunes, interpret the top latents.

These compose ``emkit.sae.fit``, ``emkit.diff`` and ``emkit.interpret``; each
returns its :mod:`emkit.stage_results` record, which the report reads. Steering and prediction are in
:mod:`emkit.pipeline.steering` and :mod:`emkit.pipeline.prediction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emkit.errors import EmkitError
from emkit.pipeline.context import Context
from emkit.pipeline.recipe import BASE
from emkit.stage_results import HELDOUT_SPLITS, TRAINED_ONLY, DiffResult, InterpretResult, SaeResult


def sae_layer(ctx: Context, model: Any) -> int:
    from emkit.models.layers import num_layers

    s = ctx.recipe.sae
    n = num_layers(model)
    layer = s.layer if s.layer is not None else n // 2
    if not 0 <= layer < n:
        raise EmkitError(f"sae.layer {layer} is out of range", hint=f"the model has layers 0..{n - 1}")
    return layer


def load_run_sae(ctx: Context) -> Any:
    from emkit.sae import load_sae

    return load_sae(ctx.result("sae").path)


# ---------------------------------------------------------------------------------------------- SAE
def stage_sae(ctx: Context) -> SaeResult:
    from emkit.models.layers import hidden_size
    from emkit.sae import load_sae
    from emkit.sae.fit import capture_acts, train_or_load

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
    root = ctx.run.path / "sae"
    acts = capture_acts(model, tok, root, model_name=ctx.recipe.model, layer=layer, corpus=s.corpus,
                        ctx_len=s.ctx_len, tokens=tokens, dtype=s.acts_dtype, batch_size=s.capture_batch,
                        progress=ctx.progress)
    out = dict(layer=layer, hook=f"blocks.{layer}.hook_resid_post", corpus=s.corpus, tokens=acts.index["n_tokens"],
               acts=str(acts.path))
    if s.path:
        return SaeResult(**out, path=str(Path(s.path).resolve()), trained=False, num_latents=sae.num_latents,
                         k=sae.k, heldout_fvu=sae.cfg.meta.get("heldout_fvu"),
                         absent=TRAINED_ONLY | set(HELDOUT_SPLITS))
    folder, res = train_or_load(acts, root, s.train, corpus=s.corpus, progress=ctx.progress)
    sm = res.summary
    return SaeResult(**out, path=str(folder), trained=True, num_latents=res.sae.num_latents, k=res.sae.k,
                     heldout_fvu=sm.get("heldout_fvu"), fvu=sm.get("train_fvu"), dead_frac=sm.get("dead_frac"),
                     train_tokens=sm.get("train_tokens"), steps=sm.get("steps"),
                     **{k: sm[k] for k in HELDOUT_SPLITS if k in sm},
                     absent=frozenset(k for k in HELDOUT_SPLITS if k not in sm))


# ---------------------------------------------------------------------------------------------- diff
def misaligned_models(ctx: Context) -> tuple[list[str], str]:
    """The fine-tunes to rank latents over: the recipe's list, else those measurably misaligned."""
    r = ctx.recipe
    if r.diff.misaligned:
        return list(r.diff.misaligned), "chosen in the recipe"
    ev = ctx.result("evaluate").models
    base = ctx.result("baseline").eval.misaligned
    above = [lab for lab, m in ev.items() if (m.fraction or 0) > 0
             and m.misaligned.get("lo") is not None and base.get("hi") is not None and m.misaligned["lo"] > base["hi"]]
    if above:
        return above, "fine-tunes whose misalignment interval lies above the base model's"
    top = max(r.data.fractions)
    labels = [m.label for m in r.models() if m.fraction == top and top > 0]
    if not labels:
        raise EmkitError("no fine-tune has wrong data to diff", hint="add a fraction > 0 to data.fractions")
    return labels, (f"no fine-tune was measurably more misaligned than the base model, so the {100 * top:.4g}% "
                    "wrong-data models are used")


def stage_diff(ctx: Context) -> DiffResult:
    """Rank latents (shared inputs by default, see :mod:`emkit.pipeline.diffing`), the positive control's too."""
    from emkit.pipeline.diffing import run_diff

    misaligned, why = misaligned_models(ctx)
    return run_diff(ctx, load_run_sae(ctx), ctx.result("sae").layer, misaligned, why)


def stage_interpret(ctx: Context) -> InterpretResult:
    from emkit.activations import ActivationStore
    from emkit.interpret import latent_cards

    r = ctx.recipe
    it = r.interpret
    sae = load_run_sae(ctx)
    diff = ctx.result("diff")
    ranking = diff.ranking[: it.latents]
    if not ranking:
        return InterpretResult(cards=[], note="no latents to interpret", absent=frozenset({"positive_control_cards"}))
    model, tok = ctx.load(BASE)
    store = ActivationStore(ctx.result("sae").acts)
    persona = [row for row in (diff.positive_control.ranking if diff.positive_control else [])[: max(1, it.latents // 2)]
               if row["latent"] not in {r["latent"] for r in ranking}]
    cards = latent_cards(sae, model, tok, [row["latent"] for row in ranking + persona], store=store,
                         n_contexts=it.contexts, k_logits=it.logit_tokens, max_tokens=it.corpus_tokens,
                         explainer=it.explainer, progress=ctx.progress)
    pc_cards = [c.brief_dict(score=row["score"]) for row, c in zip(persona, cards[len(ranking):], strict=True)]
    out = [card.as_dict(rank=rank, score=row["score"])
           for rank, (row, card) in enumerate(zip(ranking, cards[: len(ranking)], strict=True), 1)]
    note = (f"Contexts from {store.index.get('n_tokens', 0):,} tokens of the SAE corpus ({store.index.get('source')}); "
            "logit lens through the final norm's gain; histogram of nonzero activations.")
    return InterpretResult(cards=out, positive_control_cards=pc_cards, note=note)
