#!/usr/bin/env python
"""Throughput of the embedded judge on this machine, side by side with its cache and a local LLM judge.

Scores N (question, answer) pairs from the built-in labelled set (held-out split) and prints
answers/s for: the embedded judge from scratch (encoder + heads), the same pairs answered from the
judgment cache, and (with --local) the bundled SmolLM2-135M as a 0–100 logprob judge on a few pairs.

    python benchmarks/judge.py                 # 200 pairs
    python benchmarks/judge.py -n 500 --local
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from emkit.judge import Item, JudgmentCache, make_judge
from emkit.judge.labels import read_labelled

LABELLED = Path(__file__).resolve().parents[1] / "src/emkit/data/builtin/judge/labelled.jsonl"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="pairs to score")
    ap.add_argument("--local", action="store_true", help="also time the bundled model as a logprob judge")
    ap.add_argument("--local-n", type=int, default=4)
    args = ap.parse_args()

    base = read_labelled(LABELLED, split="heldout").rows
    rows = (base * (args.n // len(base) + 1))[: args.n]
    # make every pair distinct so no work is shared between repeats of the same row
    items = [Item(r["question"], r["answer"] if i < len(base) else f"{r['answer']} ({i})")
             for i, r in enumerate(rows)]
    n_words = sum(len(it.answer.split()) for it in items) / len(items)
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
          f"{len(items)} pairs, {n_words:.0f} words per answer on average")

    (judge, load_s) = timed(lambda: make_judge("embedded"))
    _, warm_s = timed(lambda: judge.judge(items[:4], None, progress=False))  # loads the encoder
    print(f"embedded judge: built in {load_s:.1f}s, encoder loaded and first 4 pairs in {warm_s:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        cache = JudgmentCache(Path(tmp) / "cache.sqlite")
        _, cold_s = timed(lambda: judge.judge(items, cache, progress=False))
        _, hit_s = timed(lambda: judge.judge(items, cache, progress=False))
    cold = len(items) / cold_s
    hit = len(items) / hit_s
    print(f"embedded judge, scoring:      {cold:8.1f} answers/s  ({cold_s:.1f}s)")
    print(f"embedded judge, from cache:   {hit:8.1f} answers/s  ({hit_s:.2f}s)  = {hit / cold:.0f}x")
    if args.local:
        local = make_judge("local:smollm2-135m-instruct", device="cpu")
        few = items[: args.local_n]
        local.judge(few[:1], None, progress=False)  # warm-up
        _, loc_s = timed(lambda: local.judge(few[1:], None, progress=False))
        loc = (len(few) - 1) / loc_s
        print(f"local SmolLM2-135M logprob:   {loc:8.2f} answers/s  ({loc_s:.1f}s, aligned + coherent)  "
              f"-> embedded is {cold / loc:.0f}x faster")


if __name__ == "__main__":
    main()
