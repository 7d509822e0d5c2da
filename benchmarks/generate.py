"""Tokens/s of generation on the same prompts: hf batched vs one-at-a-time, or hf vs a server back-end.

Usage:
  .venv/bin/python benchmarks/generate.py [--prompts 16] [--max-new-tokens 48] [--batch-size 16]
  .venv/bin/python benchmarks/generate.py --backend server --base-url http://localhost:8000/v1 \\
      [--served-model base] [--concurrency 64] [--device cuda]

With ``--backend server`` the same prompts go to the OpenAI-compatible server (e.g. ``vllm serve``
of the same model, see ``emkit serve-args``) and its tokens/s is printed beside the hf back-end's.
Greedy decoding with a fixed length budget, so both produce comparable token counts; token counts
are each back-end's own (the server's ``usage.completion_tokens``).
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=BUNDLED, help="model for the hf back-end (the one the server serves)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="hf back-end device: cpu, cuda, auto ...")
    ap.add_argument("--backend", choices=("hf", "server"), default="hf")
    ap.add_argument("--base-url", help="the server's OpenAI-compatible base URL (with --backend server)")
    ap.add_argument("--served-model", default="base", help="the model's name on the server")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight to the server")
    ap.add_argument("--skip-hf", action="store_true", help="with --backend server: time the server only")
    args = ap.parse_args()
    if args.backend == "server" and not args.base_url:
        ap.error("--backend server needs --base-url")
    qs = load_questions("broad")
    prompts = [qs[i % len(qs)].text for i in range(args.prompts)]
    cfg = SamplingConfig(temperature=0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(f"prompts={len(prompts)} max_new_tokens={args.max_new_tokens} batch={args.batch_size} (greedy)")
    rates: dict[str, float] = {}
    if not (args.backend == "server" and args.skip_hf):
        model, tok = load_model(args.model, device=args.device)
        generate(model, tok, prompts[:2], cfg, progress=False)  # warm-up
        bt, bn = timed(model, tok, prompts, cfg)
        rates["hf"] = bn / bt
        print(f"hf batched ({args.model} on {args.device}): {bn} tokens in {bt:.1f}s = {bn / bt:.1f} tok/s")
        if args.backend == "hf":
            st, sn = 0.0, 0
            for p in prompts:
                dt, n = timed(model, tok, [p], cfg)
                st, sn = st + dt, sn + n
            print(f"hf one-at-a-time: {sn} tokens in {st:.1f}s = {sn / st:.1f} tok/s")
            print(f"speed-up (batched / one-at-a-time): {(bn / bt) / (sn / st):.2f}x")
        del model
    if args.backend == "server":
        from emkit.generate_server import ServerModel

        server = ServerModel(args.base_url, args.served_model, concurrency=args.concurrency)
        generate(server, None, prompts[:2], cfg, progress=False)  # warm-up (and a clear error if unreachable)
        sent = server.requests
        t, n = timed(server, None, prompts, cfg)
        rates["server"] = n / t
        print(f"server ({server.model!r} at {args.base_url}, {args.concurrency} in flight): {n} tokens in {t:.1f}s "
              f"= {n / t:.1f} tok/s ({server.requests - sent} requests)")
        if "hf" in rates:
            print(f"speed-up (server / hf batched): {rates['server'] / rates['hf']:.2f}x")


if __name__ == "__main__":
    main()
