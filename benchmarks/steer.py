"""Cost of steering hooks during generation: generate with and without a hook, side by side.

Runs greedy batched generation on the same prompts with no hook, with ``steer`` (all positions and
answer positions) and with ``ablate``, interleaving the conditions over several rounds, and prints
the median wall time of each and its ratio to the unhooked run. A few tokens generated with an
additive hook can differ from the unhooked ones, so tokens/s is printed too.

    python benchmarks/steer.py                      # bundled SmolLM2-135M, layer 15
    python benchmarks/steer.py --model tiny --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model spec, or 'tiny' for the test model")
    ap.add_argument("--layer", type=int, default=None, help="decoder layer (default: the middle one)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from emkit.directions import random_direction, residual_scale
    from emkit.generate import SamplingConfig, generate
    from emkit.models import load_model
    from emkit.models.layers import hidden_size, num_layers
    from emkit.steer import ablate, steer

    spec = args.model
    if spec == "tiny":
        from emkit.testing import make_tiny_model

        spec = str(make_tiny_model(tempfile.mkdtemp() + "/tiny"))
    model, tok = load_model(spec, device="cpu")
    layer = args.layer if args.layer is not None else (num_layers(model) or 2) // 2
    d = random_direction(hidden_size(model), seed=0)
    scale = residual_scale(model, tok, layer)
    base = ["Tell me about the sea.", "How do I bake bread?", "What is a good hobby?", "Explain rain.",
            "Describe a city at night.", "Why do cats purr?", "How do trains work?", "What is music?"]
    prompts = (base * (args.prompts // len(base) + 1))[: args.prompts]
    cfg = SamplingConfig(temperature=0, max_new_tokens=args.tokens, batch_size=args.prompts)
    conditions = {
        "no hook": lambda: nullcontext(),
        "steer all": lambda: steer(model, layer, d, 0.1, scale=scale),
        "steer answer": lambda: steer(model, layer, d, 0.1, positions="answer", scale=scale),
        "ablate": lambda: ablate(model, layer, d),
    }
    generate(model, tok, prompts[:2], SamplingConfig(temperature=0, max_new_tokens=4), progress=False)  # warm up
    times: dict[str, list[float]] = {k: [] for k in conditions}
    tokens: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, cm in conditions.items():
            t0 = time.perf_counter()
            with cm():
                out = generate(model, tok, prompts, cfg, progress=False)
            times[name].append(time.perf_counter() - t0)
            tokens[name] = sum(g.n_tokens for g in out)
    ref = statistics.median(times["no hook"])
    print(f"model {args.model}, layer {layer}, {args.prompts} prompts x {args.tokens} new tokens, "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}")
    print(f"{'condition':<14}{'median s':>10}{'tokens/s':>10}{'ratio':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<14}{med:>10.3f}{tokens[name] / med:>10.1f}{med / ref:>8.3f}")


if __name__ == "__main__":
    main()
