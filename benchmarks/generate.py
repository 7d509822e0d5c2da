"""Tokens/s of batched vs one-at-a-time generation on the bundled model, measured in one run.

Usage: .venv/bin/python benchmarks/generate.py [--prompts 16] [--max-new-tokens 48] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import time

from emkit.data import load_questions
from emkit.generate import SamplingConfig, generate
from emkit.models import BUNDLED, load_model


def timed(model, tok, prompts, cfg) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = generate(model, tok, prompts, cfg, progress=False)
    return time.perf_counter() - t0, sum(g.n_tokens for g in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=BUNDLED)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    model, tok = load_model(args.model, device="cpu")
    prompts = [q.text for q in load_questions("broad")][: args.prompts]
    # Greedy decoding with a fixed length budget so both modes produce comparable token counts.
    cfg = SamplingConfig(temperature=0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    generate(model, tok, prompts[:2], cfg, progress=False)  # warm-up
    bt, bn = timed(model, tok, prompts, cfg)
    st, sn = 0.0, 0
    for p in prompts:
        dt, n = timed(model, tok, [p], cfg)
        st, sn = st + dt, sn + n
    print(f"model={args.model} prompts={len(prompts)} max_new_tokens={args.max_new_tokens} batch={args.batch_size}")
    print(f"one-at-a-time: {sn} tokens in {st:.1f}s = {sn / st:.1f} tok/s")
    print(f"batched:       {bn} tokens in {bt:.1f}s = {bn / bt:.1f} tok/s")
    print(f"speed-up (batched / one-at-a-time): {(bn / bt) / (sn / st):.2f}x")


if __name__ == "__main__":
    main()
