#!/usr/bin/env python
"""Add the positive control's whole activation shift to the base model, at every layer (README "What quick found").

The strongest additive test of "is the persona a direction?": both models read the same 240 chats (the first
120 rows of persona_misaligned and of persona_aligned); the persona fine-tune's mean shift after each block is
differenced into what each block adds, and that increment is added to the base model's block output (raw
units) while it answers the broad questions. A control adds random vectors of the same per-layer norms. The
answers are stored in RUN under the tags ``multilayer-shift:v1`` and ``multilayer-random:v1`` (label ``base``)
for a blind reading (`scripts/steer_reading.py RUN READERS... --tag multilayer-shift:v1 --tag
multilayer-random:v1 --temperature 0.5 --max-new-tokens 80 --end sentence`).

    python scripts/steer_multilayer.py --run runs/quick --out runs/steer-dir
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch


@torch.no_grad()
def layer_means(model, tok, items, max_length: int = 256) -> torch.Tensor:
    """[layers, d]: per-item mean of each block's output over answer tokens, averaged over items."""
    from emkit.activations.tokens import tokenize_item

    n_layers = model.config.num_hidden_layers
    acc = torch.zeros(n_layers, model.config.hidden_size)
    for it in items:
        ids, mask = tokenize_item(tok, it, max_length)
        hs = model(input_ids=torch.tensor([ids], device=model.device), output_hidden_states=True).hidden_states
        sel = torch.tensor(mask, dtype=torch.bool)
        if not sel.any():
            sel[:] = True
        for layer in range(n_layers):
            acc[layer] += hs[layer + 1][0].float().cpu()[sel].mean(0)
    return acc / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/quick"), help="the run holding the persona model")
    ap.add_argument("--persona", default="persona")
    ap.add_argument("--out", type=Path, default=Path("runs/steer-dir"), help="run folder for the answers")
    ap.add_argument("--samples", type=int, default=4, help="answers per paraphrase with the shift (control: half)")
    a = ap.parse_args()

    from emkit.data import load_dataset, load_questions
    from emkit.eval_setup import EvalSetup
    from emkit.judge import make_judge
    from emkit.models import load_model
    from emkit.run import Run
    from emkit.sampling import SamplingConfig
    from emkit.steer.hooks import steer

    items = load_dataset("persona_misaligned")[:120] + load_dataset("persona_aligned")[:120]
    base, tok = load_model("smollm2-135m-instruct")
    persona, _ = load_model(a.run / "models" / a.persona)
    shift = layer_means(persona, tok, items) - layer_means(base, tok, items)
    inc = torch.cat([shift[:1], shift[1:] - shift[:-1]])
    print("shift norm after each block:", [round(float(x), 1) for x in shift.norm(dim=1)])
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(inc.shape, generator=g)
    rand = rand / rand.norm(dim=1, keepdim=True) * inc.norm(dim=1, keepdim=True)
    layers = range(inc.shape[0] - 1)  # the last hidden state Hugging Face returns is after the final norm
    setup = EvalSetup(Run(a.out), make_judge("embedded"),
                      SamplingConfig(temperature=0.5, max_new_tokens=80, end="sentence"), load_questions("broad"))
    for name, vecs, samples in (("multilayer-shift:v1", inc, a.samples), ("multilayer-random:v1", rand, a.samples // 2)):
        with contextlib.ExitStack() as stack:
            for layer in layers:
                stack.enter_context(steer(base, layer, vecs[layer], float(vecs[layer].norm()), scale=1.0))
            rows = setup.replace(samples=samples).answers(base, tok, "base", tag=name)
        print(f"{name}: {len(rows)} answers stored in {a.out}")


if __name__ == "__main__":
    main()
