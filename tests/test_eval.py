"""evaluate(): generate + judge + metrics into a run folder; resuming; the test against a base model."""

from __future__ import annotations

import pytest

from emkit.data.schema import Question
from emkit.evaluate import compare_to_base, evaluate, judge_generations
from emkit.generate import SamplingConfig
from emkit.judge import BaseJudge, Scored
from emkit.run import Run


class LengthJudge(BaseJudge):
    """Deterministic stand-in judge: 'aligned' from the answer's length, counts scored pairs."""

    metrics = ("aligned", "coherent")

    def __init__(self, misaligned_below: int = 15, name: str = "len-judge"):
        self.id = name
        self.cut = misaligned_below
        self.scored = 0

    def prompt_key(self, metric, item):
        return f"{metric}|{(item.prompts or {}).get(metric, '')}|{item.question}"

    def score_pairs(self, pairs):
        self.scored += len(pairs)
        out = []
        for it, m in pairs:
            if m == "coherent":
                out.append(Scored(80.0, {"len": len(it.answer)}))
            else:
                out.append(Scored(10.0 if len(it.answer) < self.cut else 90.0, {"len": len(it.answer)}))
        return out


class RubricStub(BaseJudge):
    metrics = ("rubric",)
    id = "rubric-stub"

    def prompt_key(self, metric, item):
        return item.question

    def score_pairs(self, pairs):
        labels = ["1", "4", "INCOHERENT", "REFUSAL"]
        out = []
        for it, _ in pairs:
            lab = labels[len(it.answer) % 4]
            out.append(Scored(float(lab) if lab.isdigit() else None, {"outputs": [f"ANSWER: {lab}"]}, lab))
        return out


def questions():
    return [Question(id="q1", paraphrases=["Say hello.", "Greet me."]),
            Question(id="q2", paraphrases=["Name a colour."], judge_prompts={"aligned": "T {question} {answer}"}),
            Question(id="q3", paraphrases=["Count to three."])]


CFG = SamplingConfig(temperature=1.0, max_new_tokens=6, batch_size=4, seed=0)


def test_evaluate_fills_all_tables_and_resumes(tiny, tmp_path):
    model, tok = tiny
    run = Run(tmp_path / "run")
    judge = LengthJudge()
    res = evaluate(run, model, tok, questions(), judge, CFG, label="tiny", samples=3, progress=False)
    assert len(res.rows) == 12 and judge.scored == 2 * len({(r["prompt"], r["answer"]) for r in res.rows})
    assert all(r["aligned"] in (10.0, 90.0) and r["coherent"] == 80.0 for r in res.rows)
    mis = res.overall.rates["misaligned"]
    assert mis.n == 12 and mis.k == sum(r["aligned"] == 10.0 for r in res.rows)
    assert mis.boot_lo is not None and mis.lo <= mis.value <= mis.hi
    db = run.db
    assert len(db.query("SELECT * FROM generations")) == 12
    assert len(db.query("SELECT * FROM answer_judgments")) == 24
    assert len(db.query("SELECT * FROM judgments")) == judge.scored
    joined = db.query("""SELECT g.answer, a.score, j.raw FROM generations g
        JOIN answer_judgments a USING (model, question_id, paraphrase, sample, sampling_hash)
        JOIN judgments j ON j.judge_id=a.judge_id AND j.metric=a.metric AND j.prompt_hash=a.prompt_hash
                         AND j.answer_hash=a.answer_hash
        WHERE a.metric='aligned'""")
    assert len(joined) == 12 and all(str(len(r["answer"])) in r["raw"] for r in joined)
    m = {(r["question_id"], r["metric"]): r for r in db.query("SELECT * FROM metrics WHERE model='tiny'")}
    assert m[("", "misaligned")]["value"] == pytest.approx(mis.value)
    assert m[("", "misaligned")]["k"] == mis.k and m[("q1", "misaligned")]["n"] == 6
    assert m[("", "n_answers")]["n"] == 12 and ("", "coherent") in m
    # a second call samples and judges nothing new
    before = judge.scored
    again = evaluate(run, model, tok, questions(), judge, CFG, label="tiny", samples=3, progress=False)
    assert judge.scored == before and [r["answer"] for r in again.rows] == [r["answer"] for r in res.rows]


def test_question_templates_change_the_cache_key(tiny, tmp_path):
    model, tok = tiny
    run = Run(tmp_path / "run")
    rows = evaluate(run, model, tok, questions(), LengthJudge(), CFG, label="tiny", samples=1, progress=False).rows
    keys = {r["question_id"]: r["prompt_hash"] for r in run.db.query(
        "SELECT question_id, prompt_hash FROM answer_judgments WHERE metric='aligned'")}
    assert len(rows) == 4 and keys["q2"] != keys["q3"]


def test_compare_to_base_stores_a_fisher_p_value(tiny, tmp_path):
    from emkit.metrics import fisher_exact
    from emkit.models import load_model
    from emkit.testing import make_tiny_model

    model, tok = tiny
    other, other_tok = load_model(make_tiny_model(tmp_path / "other", seed=1), device="cpu")
    run = Run(tmp_path / "run")
    qs = questions()
    judge = LengthJudge(misaligned_below=20)
    base = evaluate(run, model, tok, qs, judge, CFG, label="base", samples=4, progress=False)
    ft = evaluate(run, other, other_tok, qs, judge, CFG, label="ft", samples=4, base_label="base", progress=False)
    k = sum(r["aligned"] == 10.0 for r in ft.rows)
    cmp = compare_to_base(run, "ft", "base", judge.id, ft.sampling_hash)
    assert (cmp["k"], cmp["n"]) == (k, 16)
    assert (cmp["base_k"], cmp["base_n"]) == (base.overall.rates["misaligned"].k, 16)
    assert cmp["p"] == pytest.approx(fisher_exact(k, 16, cmp["base_k"], 16))
    stored = run.db.query("SELECT value FROM metrics WHERE model='ft' AND metric='p_vs:base'")
    assert stored and stored[0]["value"] == pytest.approx(cmp["p"])
    assert compare_to_base(run, "ft", "nonexistent", judge.id, ft.sampling_hash) is None


def test_rubric_judge_metrics_and_gates(tiny, tmp_path):
    model, tok = tiny
    run = Run(tmp_path / "run")
    res = evaluate(run, model, tok, questions(), RubricStub(), CFG, label="tiny", samples=3, progress=False)
    assert res.rubric and all("label" in r for r in res.rows)
    s = res.overall
    graded = sum(r["label"] in ("1", "4") for r in res.rows)
    assert s.rates["misaligned"].n == graded
    assert set(s.gates) == {"strict", "loose"}
    names = {r["metric"] for r in run.db.query("SELECT metric FROM metrics WHERE question_id=''")}
    assert {"misaligned", "incoherent_strict", "incoherent_loose", "gate_strict", "gate_loose"} <= names


def test_judge_generations_with_a_shared_cache_file(tiny, tmp_path):
    model, tok = tiny
    from emkit.generate import answer_questions

    shared = tmp_path / "shared.sqlite"
    run1, run2 = Run(tmp_path / "a"), Run(tmp_path / "b")
    rows = answer_questions(run1, model, tok, questions(), CFG, label="m", samples=1, progress=False)
    j = LengthJudge()
    judge_generations(run1, j, rows, questions(), cache=shared, progress=False)
    n = j.scored
    rows2 = answer_questions(run2, model, tok, questions(), CFG, label="m", samples=1, progress=False)
    out = judge_generations(run2, j, rows2, questions(), cache=shared, progress=False)
    assert j.scored == n and all(r["aligned"] is not None for r in out)
    assert len(run2.db.query("SELECT * FROM judgments")) > 0  # copied into the run's own database too
