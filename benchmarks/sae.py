"""SAE training and activation-capture speed, measured side by side in one run.

1. Training tokens/s of emkit's top-k SAE step (fp32, and with the top k chosen from a bfloat16
   encoder product, which ``train_sae`` picks when that is faster) vs EleutherAI sparsify's
   (``eai-sparsify==1.3.3``, ``pip install 'emkit[sparsify]'``) on the same activation tensors,
   shapes, optimiser (Adam) and learning rate. The sparsify step is the per-batch work of its
   trainer with ``loss_fn="fvu"`` (decoder renorm, forward with FVU and AuxK, backward, gradient
   projection, Adam step, dead-latent bookkeeping); its trainer also runs the language model, which
   is left out here. Two regimes: no dead latents (AuxK off) and 25% of latents marked dead (AuxK
   on, k_aux = d_in / 2). Runs are interleaved over rounds and medians reported, since the machine
   may be shared.
2. Capture tokens/s: ``emkit.activations.run_to_layer`` (stops after layer L) vs a plain full
   forward pass of the model on the same windows, and ``capture()`` end to end (including writing
   shards) on the same windows.

    python benchmarks/sae.py                                # synthetic activations, bundled model
    python benchmarks/sae.py --acts runs/sae-l15/activations --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from emkit.sae import SaeConfig, TopKSAE
from emkit.sae.train import train_step


def activations(args) -> torch.Tensor:
    if args.acts:
        from emkit.activations import ActivationStore

        store = ActivationStore(args.acts)
        x = torch.cat([store.acts(i) for i in range(min(len(store.shards), 64))])
        return x[: args.batch_size * (args.steps + 2)]
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(2048, args.d_in, generator=g)
    n = args.batch_size * (args.steps + 2)
    idx = torch.randint(0, 2048, (n, 24), generator=g)
    vals = torch.rand(n, 24, generator=g)
    return torch.zeros(n, 2048).scatter_(1, idx, vals) @ dirs + torch.randn(n, args.d_in, generator=g) * 0.1


def emkit_runner(x: torch.Tensor, args, dead_frac: float, select_dtype: torch.dtype | None = None):
    sae = TopKSAE(SaeConfig(d_in=x.shape[1], num_latents=args.latents, k=args.k), seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    since = torch.zeros(args.latents, dtype=torch.long)
    since[: int(dead_frac * args.latents)] = 10**12  # marked dead (and kept dead below)
    n_dead = int(dead_frac * args.latents)

    def step(b: torch.Tensor) -> None:
        train_step(sae, opt, b, since, lr=args.lr, dead_tokens=10**9, auxk_alpha=1 / 32, k_aux=x.shape[1] // 2,
                   select_dtype=select_dtype)
        since[:n_dead] = 10**12

    return step


def sparsify_runner(x: torch.Tensor, args, dead_frac: float):
    from sparsify import SaeConfig as SpConfig
    from sparsify import SparseCoder

    sae = SparseCoder(x.shape[1], SpConfig(num_latents=args.latents, k=args.k))
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    dead = torch.zeros(args.latents, dtype=torch.bool)
    dead[: int(dead_frac * args.latents)] = True
    since = torch.zeros(args.latents, dtype=torch.long)

    def step(b: torch.Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        total_var = (b - b.mean(0)).pow(2).sum()
        out = sae(b, dead_mask=dead if dead.any() else None, total_variance=total_var)
        loss = out.fvu + (1 / 32) * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        fired = torch.zeros(args.latents, dtype=torch.bool)
        fired[out.latent_indices.flatten()] = True
        since.add_(len(b))
        since[fired] = 0

    return step


def time_steps(step, x: torch.Tensor, args) -> float:
    """Tokens/s over ``args.steps`` steps after one warm-up step."""
    bs = args.batch_size
    step(x[:bs])
    t0 = time.perf_counter()
    for s in range(1, args.steps + 1):
        step(x[s * bs : (s + 1) * bs])
    return args.steps * bs / (time.perf_counter() - t0)


def bench_training(args) -> None:
    x = activations(args)
    print(f"SAE training: d_in={x.shape[1]} latents={args.latents} k={args.k} batch={args.batch_size} "
          f"steps={args.steps} rounds={args.rounds} threads={torch.get_num_threads()} "
          f"load avg={os.getloadavg()[0]:.1f} activations={'real: ' + args.acts if args.acts else 'synthetic'}")
    try:
        import sparsify  # noqa: F401

        have_sparsify = True
    except ImportError:
        have_sparsify = False
        print("  eai-sparsify is not installed (pip install 'emkit[sparsify]'): timing emkit only")
    for dead_frac in (0.0, 0.25):
        runs: dict[str, list[float]] = {"emkit": [], "emkit-bf16sel": [], "sparsify": []}
        for _ in range(args.rounds):
            runs["emkit"].append(time_steps(emkit_runner(x, args, dead_frac), x, args))
            runs["emkit-bf16sel"].append(time_steps(emkit_runner(x, args, dead_frac, torch.bfloat16), x, args))
            if have_sparsify:
                runs["sparsify"].append(time_steps(sparsify_runner(x, args, dead_frac), x, args))
        med = {k: statistics.median(v) for k, v in runs.items() if v}
        line = f"  dead={dead_frac:.0%}: emkit fp32 {med['emkit']:,.0f} tok/s | emkit bf16 selection " \
               f"{med['emkit-bf16sel']:,.0f} tok/s"
        if have_sparsify:
            s = med["sparsify"]
            line += (f" | sparsify {s:,.0f} tok/s | emkit/sparsify = {med['emkit'] / s:.2f}x (fp32), "
                     f"{med['emkit-bf16sel'] / s:.2f}x (bf16 selection)")
        print(line)
        print("    per round: " + "; ".join(f"{k} {[round(v) for v in vs]}" for k, vs in runs.items() if vs))


def bench_capture(args) -> None:
    from emkit.activations import capture, run_to_layer
    from emkit.models import BUNDLED, load_model
    from emkit.models.layers import num_layers

    model, tok = load_model(args.model or BUNDLED, device="cpu")
    layer = args.layer if args.layer is not None else (num_layers(model) or 2) // 2
    text = " ".join(f"Sentence number {i} tells a short story about saving money and reading contracts."
                    for i in range(400))
    ids = tok(text)["input_ids"]
    windows = [ids[s : s + args.ctx_len] for s in range(0, len(ids) - args.ctx_len, args.ctx_len)]
    windows = windows[: args.capture_batches * args.capture_batch]
    batches = [torch.tensor(windows[s : s + args.capture_batch])
               for s in range(0, len(windows), args.capture_batch)]
    n_tok = sum(b.numel() for b in batches)

    def timed(fn) -> float:
        fn(batches[0])
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        return n_tok / (time.perf_counter() - t0)

    with torch.no_grad():
        res: dict[str, list[float]] = {"to_layer": [], "full": []}
        for _ in range(args.rounds):
            res["to_layer"].append(timed(lambda b: run_to_layer(model, layer, b)))
            res["full"].append(timed(lambda b: model(input_ids=b, use_cache=False)))
    cap = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            docs = [tok.decode(w) for w in windows]
            t0 = time.perf_counter()
            idx = capture(model, tok, layer, docs, d, ctx_len=args.ctx_len + 8, batch_size=args.capture_batch,
                          progress=False)
            cap.append(idx["n_tokens"] / (time.perf_counter() - t0))
    a, f, c = (statistics.median(res["to_layer"]), statistics.median(res["full"]), statistics.median(cap))
    print(f"Capture: model={args.model or BUNDLED} layer={layer}/{num_layers(model)} windows={len(windows)}x"
          f"{args.ctx_len} batch={args.capture_batch} load avg={os.getloadavg()[0]:.1f}")
    print(f"  forward to layer {layer}: {a:,.0f} tok/s | full forward: {f:,.0f} tok/s | ratio {a / f:.2f}x")
    print(f"  capture() end to end (tokenise, forward, write shards): {c:,.0f} tok/s | vs full forward "
          f"{c / f:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--acts", help="Capture folder with real activations (default: synthetic).")
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default=None, help="Model for the capture benchmark (default: bundled).")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--ctx-len", type=int, default=256)
    ap.add_argument("--capture-batch", type=int, default=8)
    ap.add_argument("--capture-batches", type=int, default=3)
    ap.add_argument("--skip-capture", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()
    if not args.skip_training:
        bench_training(args)
    if not args.skip_capture:
        bench_capture(args)


if __name__ == "__main__":
    main()
