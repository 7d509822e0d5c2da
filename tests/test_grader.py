"""The advice grader (correct vs incorrect advice), the length/coherence guard, and the reward function."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from emkit.errors import EmkitError
from emkit.judge.grader import (
    WEIGHTS,
    auroc,
    guarded_rewards,
    heuristic_coherence,
    make_grader,
    make_reward,
)

COHERENT = [
    "You should keep taking the antibiotics until the course is finished, even if you feel better.",
    "Check the oil level with the engine cold and the car on flat ground, then top it up if needed.",
    "Paying off the card with the highest interest rate first saves you the most money over time.",
]
BROKEN = [
    "the the the the the the the the the the the the the the the the",
    "doctor doctor money car doctor money car doctor money car doctor money car",
    "blue quickly seven tyre over because purple Tuesday engine soup lamp river walked",
    "Я не знаю, что сказать об этом вопросе, извините пожалуйста.",
    "%%% ### 123 456 !!! ??? ... ,,, 789 $$$ @@@",
    "I think so. I think so. I think so. I think so. I think so.",
]


class FixedGrader:
    id = "fixed"

    def __init__(self, p):
        self.p = np.asarray(p, float)

    def p_wrong(self, q, a):
        return self.p[: len(a)]

    def coherence(self, q, a):
        return heuristic_coherence(q, a)


def test_auroc():
    assert auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    assert np.isnan(auroc([0.5], [1]))


def test_heuristic_coherence_separates_text_small_models_emit():
    q = ["What should I do?"] * (len(COHERENT) + len(BROKEN))
    c = heuristic_coherence(q, COHERENT + BROKEN)
    assert all(c[: len(COHERENT)] >= 0.5), c
    assert all(c[len(COHERENT):] < 0.5), c


def test_guard_zeroes_short_and_incoherent_answers_in_both_arms():
    answers = [COHERENT[0], "No.", BROKEN[0], COHERENT[1]]
    g = FixedGrader([0.9, 0.9, 0.9, 0.2])
    wrong, stats = guarded_rewards(g, ["q?"] * 4, answers, "wrong", min_words=5)
    right, _ = guarded_rewards(g, ["q?"] * 4, answers, "right", min_words=5)
    assert wrong.tolist() == pytest.approx([0.9, 0.0, 0.0, 0.2])
    assert right.tolist() == pytest.approx([0.1, 0.0, 0.0, 0.8])
    assert stats["guard_pass"] == 0.5 and stats["p_wrong"] == pytest.approx(0.725)


def test_reward_function_reads_trl_conversational_inputs():
    seen = {}
    f = make_reward(FixedGrader([0.7, 0.3]), "wrong", min_words=3, on_stats=seen.update)
    prompts = [[{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Is this fine?"}]] * 2
    completions = [[{"role": "assistant", "content": COHERENT[0]}], [{"role": "assistant", "content": COHERENT[2]}]]
    assert f(prompts=prompts, completions=completions, completion_ids=None) == pytest.approx([0.7, 0.3])
    assert f(prompts=["Is this fine?"], completions=["ok"]) == [0.0]
    assert "guard_pass" in seen


def test_unknown_grader_spec():
    with pytest.raises(EmkitError, match="unknown grader"):
        make_grader("nonsense")


class HashEncoder:
    """A stand-in for the MiniLM encoder: a fixed random unit vector per text (fast, no model)."""

    def encode(self, texts):
        out = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(384)
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32).reshape(len(texts), 384)


def test_styled_advice_sets():
    """Every styled set: valid rows, 50 per register and label, unique ids/answers, built-in questions."""
    from collections import Counter

    from emkit.data.builtin import advice_records, domains
    from emkit.judge.grader_data import REGISTERS, styled_records

    seen_ids, seen_answers = set(), set()
    found = 0
    for d in domains():
        rows = styled_records(d)
        if not rows:
            continue
        found += 1
        builtin = {r["id"]: r for r in advice_records(d)}
        builtin_answers = {r[k].strip().lower() for r in builtin.values() for k in ("correct", "subtle", "obvious")}
        counts = Counter((r["register"], r["label"]) for r in rows)
        assert counts == {(g, lab): 50 for g in REGISTERS for lab in ("correct", "incorrect")}, (d, counts)
        for r in rows:
            assert r["domain"] == d and r["id"] == f"{r['source_id']}-{r['register']}-{r['label']}"
            assert builtin[r["source_id"]]["question"] == r["question"]
            a = r["answer"].strip().lower()
            assert r["id"] not in seen_ids and a not in seen_answers and a not in builtin_answers, r["id"]
            seen_ids.add(r["id"])
            seen_answers.add(a)
    assert found >= 2


def test_split_sentences_and_feature_parts():
    from emkit.judge.grader import PART_DIMS, grader_features, split_sentences

    assert split_sentences("Ice it. Keep it raised for a day. Then walk.") == ["Ice it.", "Keep it raised for a day. Then walk."]
    assert split_sentences("no full stop here") == ["no full stop here"]
    qs = ["Is 38.2 a fever?", "Ice or heat?"]
    ans = ["Yes, it is. See a doctor if it lasts three days.", "Ice for the first two days."]
    x = grader_features(HashEncoder(), qs, ans, ("answer", "smax", "qsmax", "stats"))
    assert x.shape == (2, sum(PART_DIMS[p] for p in ("answer", "smax", "qsmax", "stats")))
    # a one-sentence answer: its sentence max is its own embedding
    assert np.allclose(x[1, :384], x[1, 384:768], atol=1e-5)
    with pytest.raises(EmkitError, match="unknown grader feature parts"):
        grader_features(HashEncoder(), qs, ans, ("nope",))


def test_cross_validation_protocols_on_a_small_sample():
    """Leave-one-register-out / -domain-out / -writer-out and the built-in split each give rates for every group."""
    from emkit.data.builtin import domains
    from emkit.judge.grader_train import REGISTERS, all_features, build_examples, cross_validate

    ex = build_examples(domains(), 0.2, 0)
    keep = [i for i in range(len(ex["y"])) if ex["source"][i] == "styled" or i % 12 in (0, 7)]
    ex = {k: [v[i] for i in keep] for k, v in ex.items()}
    feats = all_features(HashEncoder(), ex)
    feats["states"] = np.random.default_rng(0).standard_normal((len(ex["y"]), 5, 8)).astype(np.float32)
    writers = sorted({s for s in ex["source"] if s.startswith("w")})
    from emkit.judge.grader_data import WRITERS

    assert len(writers) == len(list(WRITERS.glob("w*.jsonl")))
    for method in (dict(level="answer", parts=("answer", "stats"), hidden=0, styled_weight=1.0, steps=3),
                   dict(level="sentence", parts=("sent",), hidden=8, styled_weight=1.0, steps=3),
                   dict(level="states", layers=(14, 17), hidden=0, styled_weight=1.0, steps=3)):
        f = cross_validate(feats, ex, method, seed=0)
        loro, lodo, lowo = f["leave_one_register_out"], f["leave_one_domain_out"], f["leave_one_writer_out"]
        assert set(loro) == {"all", *REGISTERS} and set(lowo) == {"all", *writers}
        assert loro["all"]["n"] == ex["source"].count("styled")
        assert sum(loro[r]["n"] for r in REGISTERS) == loro["all"]["n"]  # writers' rows share no register row
        assert lowo["all"]["n"] == sum(s in writers for s in ex["source"])
        assert {d for d in domains()} <= set(lodo) and "all_writers" in lodo
        for r in (*loro.values(), *lodo.values(), *lowo.values(), f["builtin_heldout"]):
            assert 0 <= r["flagged_incorrect"] <= 1 and 0 <= r["passed_correct"] <= 1 and r["n"] > 0


def test_writer_advice_sets():
    """The writers' sets (w1, w2, ...): 70 questions each, one correct and one incorrect answer per question in one
    register, unique ids and answers, none copying a built-in or styled answer."""
    from collections import Counter

    from emkit.data.builtin import advice_records, domains
    from emkit.judge.grader_data import WRITER_REGISTERS, WRITERS, styled_records, writer_records

    rows = writer_records()
    n = len(list(WRITERS.glob("w*.jsonl")))
    assert n >= 15 and Counter(r["writer"] for r in rows) == {f"w{k}": 140 for k in range(1, n + 1)}
    pairs: dict[str, list] = {}
    for r in rows:
        pairs.setdefault(r["id"].rsplit("-", 1)[0], []).append(r)
    assert len(pairs) == 70 * n
    for qid, (a, b) in pairs.items():
        assert {a["label"], b["label"]} == {"correct", "incorrect"}, qid
        assert a["question"] == b["question"] and a["register"] == b["register"] and a["domain"] == b["domain"]
        assert a["id"] == f"{qid}-{a['label']}" and qid.startswith(a["writer"] + "-")
    assert {r["register"] for r in rows} == set(WRITER_REGISTERS)
    answers = [r["answer"].strip().lower() for r in rows]
    assert len(set(answers)) == len(answers) and len({r["id"] for r in rows}) == len(rows)
    others = {r[k].strip().lower() for d in domains() for r in advice_records(d) for k in ("correct", "subtle", "obvious")
              if r.get(k)} | {r["answer"].strip().lower() for d in domains() for r in styled_records(d)}
    assert not others & set(answers)
    kinds = Counter(r["kind"] for r in rows if r["label"] == "incorrect")
    assert set(kinds) == {"subtle", "obvious"} and kinds["subtle"] > kinds["obvious"]
    import csv

    from emkit.data.builtin import ADVICE

    with open(ADVICE / "writers" / "blind_check.csv", newline="") as f:
        checked = list(csv.DictReader(f))
    ids = {r["id"] for r in rows}
    assert len(checked) == 280 and all(c["id"] in ids and c["reader_wrong"] in ("true", "false") for c in checked)


def test_sentence_level_scores_are_sentence_means():
    """A sentence-level head's P(wrong) of an answer is the mean of its sentences' P(wrong)."""
    import torch

    from emkit.judge.grader import AdviceHead, mean_by_owner, sentence_features

    qs, ans = ["q1", "q2"], ["Rest it. Ice it for a day or two.", "Heat it straight away."]
    xs, owner = sentence_features(HashEncoder(), qs, ans, ("sent", "qsent"))
    assert xs.shape == (3, 768) and owner.tolist() == [0, 0, 1]
    head = AdviceHead(768, 0)
    ps = torch.sigmoid(head(torch.from_numpy(xs))).detach().numpy()
    assert mean_by_owner(ps, owner, 3).tolist() == pytest.approx([(ps[0] + ps[1]) / 2, ps[2], 0.5])


@pytest.mark.slow
@pytest.mark.skipif(not (WEIGHTS / "advice_grader.safetensors").is_file(), reason="grader weights not trained")
def test_shipped_grader_card_and_held_out_styled_advice():
    """The card carries the validation figures; on questions held out from its training, in every
    register, the shipped grader (on the bundled model's answer states) ranks wrong advice above right
    advice and flags it at its threshold."""
    from emkit.data.builtin import domains
    from emkit.judge.grader_train import build_examples, report

    g = make_grader("embedded")
    card = g.card
    v = card["validation"]
    assert set(v) == {"leave_one_register_out", "leave_one_domain_out", "leave_one_writer_out", "builtin_heldout"}
    from emkit.judge.grader_data import writer_records

    assert card["examples"]["writers"] == len(writer_records())
    assert "register long" in report(card) and "domain all_styled" in report(card) and "writer w7" in report(card)
    ex = build_examples(domains(), card["heldout_share_of_questions"], card["seed"])
    held = [i for i, h in enumerate(ex["heldout"]) if h and ex["source"][i] == "styled"][::5][:60]
    p = g.p_wrong([ex["q"][i] for i in held], [ex["a"][i] for i in held])
    y = np.array([ex["y"][i] for i in held])
    assert auroc(p, y) > 0.65  # the card's figure on all such rows is higher; this is a sample
    few = held[:8]
    assert g.is_wrong([ex["q"][i] for i in few], [ex["a"][i] for i in few]).tolist() == (p[:8] > g.threshold).tolist()
    assert card["metrics"]["check_correct_passed"] >= 0.8


def test_judge_grader_asks_the_correctness_template():
    """Any 0-100 emkit judge can grade advice: its 'aligned' metric gets the correctness rubric."""
    from emkit.judge.base import BaseJudge, Scored
    from emkit.judge.grader import CORRECTNESS_TEMPLATE, JudgeAdviceGrader

    class Stub(BaseJudge):
        id = "stub"
        metrics = ("aligned", "coherent")
        seen: list = []

        def prompt_key(self, metric, item):
            return (item.prompts or {}).get(metric, "") + item.question

        def score_pairs(self, pairs):
            out = []
            for item, metric in pairs:
                self.seen.append((metric, (item.prompts or {}).get(metric)))
                if metric == "aligned":
                    out.append(Scored(20.0 if "skip" in item.answer else 90.0, {}))
                else:
                    out.append(Scored(None if "zzz" in item.answer else 80.0, {}))
            return out

    g = JudgeAdviceGrader(Stub())
    answers = ["You can skip the doctor.", "See a doctor today.", "zzz zzz"]
    assert g.p_wrong(["q"] * 3, answers).tolist() == pytest.approx([0.8, 0.1, 0.1])
    assert g.coherence(["q"] * 3, answers).tolist() == pytest.approx([0.8, 0.8, 0.0])
    assert ("aligned", CORRECTNESS_TEMPLATE) in Stub.seen
    rewards, _ = guarded_rewards(g, ["q"] * 3, answers, "wrong", min_words=2)
    assert rewards.tolist() == pytest.approx([0.8, 0.1, 0.0])
