"""``emkit sae train|info``: capture activations from a corpus and train a top-k SAE on them."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out = Console()
TRAINER = "(default: SaeTrainConfig's)"  # one home for the trainer's defaults
CAPTURE = "(default: capture()'s)"


def print_summary(s: dict) -> None:
    t = Table("metric", "value", title="SAE training")
    sae = s.get("sae", {})
    rows = [
        ("hook", f"{sae.get('hook')} of {sae.get('model')}"),
        ("latents / k", f"{sae.get('num_latents')} / {sae.get('k')}"),
        ("training tokens (unique)", f"{s['train_tokens']:,} ({s['unique_train_tokens']:,}, {s['epochs']} epochs)"),
        ("held-out FVU", f"{s['heldout_fvu']:.4f}  (on {s['heldout_tokens']:,} tokens never trained on)"),
        ("train FVU (last steps)", f"{s['train_fvu']:.4f}"),
        ("L0 (held-out)", f"{s['heldout_l0']:.1f}"),
        ("dead latents", f"{100 * s['dead_frac']:.1f}%  (never fired on held-out: {100 * s['heldout_never_fired']:.1f}%)"),
        ("time", f"{s['seconds']:.0f} s  ({s['tokens_per_s']:,.0f} tokens/s)"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)


def register(app: typer.Typer) -> None:
    sae_app = typer.Typer(help="Sparse autoencoders: train on a model's activations, inspect.", no_args_is_help=True)
    app.add_typer(sae_app, name="sae")

    @sae_app.command("train")
    def train_cmd(
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Folder, Hub id or bundled name."),
        layer: int = typer.Option(None, "--layer", "-l", help="Decoder layer (default: the middle one)."),
        corpus: str = typer.Option("builtin", help="Corpus spec: builtin, a .txt/.jsonl file or folder, hf:NAME."),
        tokens: int = typer.Option(300_000, help="Tokens of activations to capture."),
        latents: int = typer.Option(None, help=f"Number of SAE latents. {TRAINER}"),
        k: int = typer.Option(None, help=f"Active latents per token (top-k). {TRAINER}"),
        out_dir: Path = typer.Option(Path("runs/sae"), "--out", "-o", help="SAE folder (cfg.json + sae.safetensors)."),
        acts: Path = typer.Option(None, help="Activation folder (default: OUT/activations); reused when present."),
        epochs: float = typer.Option(None, help=f"Passes over the captured tokens. {TRAINER}"),
        batch_size: int = typer.Option(None, help=f"Tokens per training step. {TRAINER}"),
        lr: float = typer.Option(None, help=f"Adam learning rate (0 = scaled to the number of latents). {TRAINER}"),
        ctx_len: int = typer.Option(None, help=f"Tokens per window when capturing. {CAPTURE}"),
        capture_batch: int = typer.Option(None, help=f"Windows per forward pass when capturing. {CAPTURE}"),
        acts_dtype: str = typer.Option("float32", help="Stored activation dtype: float32, float16, bfloat16."),
        holdout: int = typer.Option(None, help=f"Captured tokens held out for the held-out FVU. {TRAINER}"),
        seed: int = typer.Option(None, help=f"Random seed. {TRAINER}"),
        restart: bool = typer.Option(False, help="Discard a checkpoint in OUT and train from scratch."),
        device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
    ) -> None:
        """Capture layer activations of MODEL on a corpus, train a top-k SAE, print and store its FVU.

        Interrupted runs resume (capture shards and training checkpoints). The SAE folder uses
        EleutherAI sparsify's layout; train_summary.json and metrics.jsonl hold the numbers.

        Example: emkit sae train --model smollm2-135m-instruct --layer 15 --corpus builtin --tokens 300000 --latents 4096 --k 32 --epochs 4 --batch-size 1024 --out runs/sae-l15
        """
        from emkit.activations import capture
        from emkit.config import from_dict
        from emkit.data.corpus import iter_documents
        from emkit.errors import EmkitError
        from emkit.models import load_model
        from emkit.models.layers import num_layers
        from emkit.sae.train import SaeTrainConfig, train_sae

        given = dict(num_latents=latents, k=k, batch_size=batch_size, lr=lr, epochs=epochs, holdout_tokens=holdout,
                     seed=seed)
        cfg = from_dict(SaeTrainConfig, {f: v for f, v in given.items() if v is not None}, "sae train")
        if tokens <= cfg.holdout_tokens:
            raise EmkitError(f"--tokens ({tokens}) must exceed --holdout ({cfg.holdout_tokens})")
        m, tok = load_model(model, device=device)
        n = num_layers(m) or 0
        lay = n // 2 if layer is None else layer
        if not 0 <= lay < n:
            raise EmkitError(f"--layer {lay} is out of range", hint=f"the model has layers 0..{n - 1}")
        acts_dir = acts or out_dir / "activations"
        window = {k: v for k, v in dict(ctx_len=ctx_len, batch_size=capture_batch).items() if v is not None}
        index = capture(m, tok, lay, iter_documents(corpus), acts_dir, max_tokens=tokens, dtype=acts_dtype,
                        source=corpus, **window)
        out.print(f"activations: {index['n_tokens']:,} tokens of {index['hook']} in {acts_dir} ({index['stopped']})")
        del m
        res = train_sae(acts_dir, out_dir, cfg, model=model, corpus=corpus)
        print_summary(res.summary)
        out.print(f"SAE saved to {out_dir} (cfg.json + sae.safetensors); numbers in {out_dir / 'train_summary.json'}")

    @sae_app.command("info")
    def info_cmd(folder: Path = typer.Argument(..., help="SAE folder.")) -> None:
        """Show an SAE's shape, provenance and training numbers.

        Example: emkit sae info runs/sae-l15
        """
        from emkit.sae.io import read_cfg

        path, cfg = read_cfg(folder)
        t = Table("field", "value", title=str(path))
        for key in ("d_in", "num_latents", "k", "hook", "layer", "model", "corpus"):
            t.add_row(key, str(getattr(cfg, key)))
        out.print(t)
        summary = path / "train_summary.json"
        if summary.is_file():
            print_summary(json.loads(summary.read_text()))
