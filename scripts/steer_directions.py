#!/usr/bin/env python
"""Directions for steering with the positive control, beyond its top SAE latent (README "What quick found").

Writes to OUT (default runs/steer-dir/directions/) three directions at the SAE's layer, as safetensors that
`emkit steer sweep --direction file:PATH` reads:
- ``model.safetensors``: the persona fine-tune's own shift (its mean activation minus the base model's on
  the same 240 chats: the first 120 rows of persona_misaligned and of persona_aligned, answer tokens);
- ``text.safetensors``: in the base model, persona_misaligned answers minus persona_aligned answers
  (a contrastive "persona" vector of the texts, not of a fine-tune);
- ``bundle.safetensors``: the persona's top-10 latents' decoder rows weighted by their ranked shift.
Prints each one's norm in units of the residual scale and its largest cosines with SAE decoder rows.

    python scripts/steer_directions.py --run runs/quick
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/quick"))
    ap.add_argument("--persona", default="persona", help="the positive control's model label in the run")
    ap.add_argument("--out", type=Path, default=Path("runs/steer-dir/directions"))
    ap.add_argument("--n", type=int, default=120, help="rows of each persona set to read")
    a = ap.parse_args()

    from emkit.data import load_dataset
    from emkit.directions import Direction, diff_of_means, item_means, residual_scale, save_direction
    from emkit.models import load_model
    from emkit.sae.model import load_sae

    sae_dir = next((a.run / "sae").glob("sae-*"))
    sae = load_sae(sae_dir)
    layer = sae.cfg.layer
    mis, ali = load_dataset("persona_misaligned")[: a.n], load_dataset("persona_aligned")[: a.n]
    base, tok = load_model("smollm2-135m-instruct")
    persona, _ = load_model(a.run / "models" / a.persona)
    scale = residual_scale(base, tok, layer)
    kw = dict(tokens="answer", max_length=256)
    b = item_means(base, tok, layer, mis + ali, **kw)  # read once: both the shift and the text contrast use it
    shift = Direction(diff_of_means(item_means(persona, tok, layer, mis + ali, **kw), b), "persona-model-diff", layer,
                      source="shift")  # what directions.model_difference computes, without a second base pass
    text = Direction(diff_of_means(b[: a.n], b[a.n :]), "persona-text-diff", layer, source="diff")
    db = sqlite3.connect(f"file:{a.run / 'results.sqlite'}?mode=ro", uri=True)
    top = db.execute("SELECT latent, score FROM latent_ranking WHERE source LIKE 'shared:%#' || ? AND token_set = "
                     "'answer' ORDER BY rank LIMIT 10", (a.persona,)).fetchall()
    W = sae.W_dec.detach().float()
    bundle = Direction(sum(s * W[lat] for lat, s in top), "persona-top10-latents", layer, source="sae top-10")
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"layer {layer}; residual scale {scale:.1f}; top latents {[lat for lat, _ in top]}")
    for name, d in (("model", shift), ("text", text), ("bundle", bundle)):
        save_direction(d, a.out / f"{name}.safetensors")
        cos = (W @ d.vector) / d.norm
        best = cos.topk(3)
        print(f"{name:6s} norm {d.norm:7.2f} = {d.norm / scale:.3f} x scale; best decoder cosines "
              f"{[(int(i), round(float(c), 3)) for c, i in zip(best.values, best.indices, strict=True)]}; "
              f"cosine with the model shift {float(torch.nn.functional.cosine_similarity(d.vector, shift.vector, dim=0)):+.3f}")


if __name__ == "__main__":
    main()
