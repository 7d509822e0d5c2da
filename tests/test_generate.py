"""Batched generation: order, determinism, truncation flags, resumable answering into a run."""

from __future__ import annotations

import pytest

from emkit.data.schema import Question
from emkit.errors import EmkitError
from emkit.generate import SamplingConfig, answer_questions, generate
from emkit.run import Run

PROMPTS = ["What is the capital of France?", "hi", "Tell me about the quick brown fox and the lazy dog please."]


def test_results_in_input_order_with_counts(tiny):
    model, tok = tiny
    out = generate(model, tok, PROMPTS, SamplingConfig(temperature=0, max_new_tokens=6), progress=False)
    assert [g.index for g in out] == [0, 1, 2]
    for g in out:
        assert 0 < g.n_tokens <= 6 or not g.truncated
        assert g.truncated == (g.n_tokens == 6)
        assert g.n_prompt_tokens > 0


def test_deterministic_under_seed(tiny):
    model, tok = tiny
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=3, batch_size=2)
    a = generate(model, tok, PROMPTS, cfg, progress=False)
    b = generate(model, tok, PROMPTS, cfg, progress=False)
    assert [g.text for g in a] == [g.text for g in b]
    c = generate(model, tok, PROMPTS, SamplingConfig(temperature=1.0, max_new_tokens=8, seed=4, batch_size=2),
                 progress=False)
    assert [g.text for g in a] != [g.text for g in c]


def test_greedy_batched_matches_single(tiny):
    model, tok = tiny
    cfg = SamplingConfig(temperature=0, max_new_tokens=8, batch_size=8)
    batched = generate(model, tok, PROMPTS, cfg, progress=False)
    single = [generate(model, tok, [p], cfg, progress=False)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single]


def test_bad_config():
    with pytest.raises(EmkitError):
        SamplingConfig(temperature=-1)
    with pytest.raises(EmkitError):
        SamplingConfig(top_p=0)


def test_empty_prompts(tiny):
    with pytest.raises(EmkitError, match="no prompts"):
        generate(*tiny, [], progress=False)


def test_answer_questions_resumes(tiny, tmp_path):
    model, tok = tiny
    qs = [Question(id="q1", paraphrases=["hi", "hello"]), Question(id="q2", paraphrases=["what is 2+2?"], system="Be brief.")]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=4)
    run = Run(tmp_path / "run")
    rows = answer_questions(run, model, tok, qs, cfg, label="tiny", samples=2, progress=False)
    assert len(rows) == 6
    assert {r["question_id"] for r in rows} == {"q1", "q2"}
    # Simulate an interruption: delete some rows, resume, and only those are sampled again.
    run.db.conn.execute("DELETE FROM generations WHERE question_id='q2'")
    run.db.conn.commit()
    calls = []
    import emkit.generate as g

    orig = g.generate

    def spy(*a, **k):
        calls.append(len(a[2]))
        return orig(*a, **k)

    g.generate = spy
    try:
        rows2 = answer_questions(run, model, tok, qs, cfg, label="tiny", samples=2, progress=False)
    finally:
        g.generate = orig
    assert calls == [2] and len(rows2) == 6
    with pytest.raises(EmkitError):
        answer_questions(run, model, tok, qs, cfg, label="tiny", samples=0)


def test_sentence_end_cuts_a_truncated_answer_to_its_last_full_sentence():
    from emkit.config import config_hash
    from emkit.generate import SamplingConfig, finish_text, trim_to_sentence

    assert trim_to_sentence("Drink water. Rest well. Then you sh") == "Drink water. Rest well."
    assert trim_to_sentence("Steps:\n1. Wash\n2. Dry the") == "Steps:\n1. Wash\n2. Dry the"  # list markers
    assert trim_to_sentence('He said "stop." Then we') == 'He said "stop."'
    assert trim_to_sentence("no sentence end at all") == "no sentence end at all"
    cfg = SamplingConfig(end="sentence")
    assert finish_text(" Fine. And th", True, cfg) == "Fine."
    assert finish_text(" Fine. And th", False, cfg) == "Fine. And th"  # finished answers are kept whole
    assert finish_text(" Fine. And th", True, SamplingConfig()) == "Fine. And th"
    # the new field leaves the hash of configs written before it unchanged, and changes it when set
    assert config_hash(SamplingConfig()) == "8eae40f357d1"
    assert config_hash(cfg) != config_hash(SamplingConfig())
    with pytest.raises(EmkitError):
        SamplingConfig(end="word")


def test_sampling_hash_is_the_stored_key_and_stored_answers_filters(tmp_path):
    """Every reader and writer of ``generations`` keys answers with ``sampling_hash``: pinned, so a
    change that would make existing runs read zero rows fails here."""
    from emkit.config import config_hash
    from emkit.generate import SamplingConfig, sampling_hash
    from emkit.results import ResultsDB, stored_answers

    cfg = SamplingConfig()
    assert sampling_hash(cfg) == config_hash({"sampling": cfg, "tag": ""}) == "273978de035c"
    assert sampling_hash(cfg, "steer") != sampling_hash(cfg)
    db = ResultsDB(tmp_path / "r.sqlite")
    db.insert("generations", [dict(model=m, question_id=q, paraphrase=0, sample=s, sampling_hash=h, prompt="p",
                                   system=None, answer="" if s == 1 else f"{m}{q}{s}", n_tokens=1, truncated=0)
                              for m in ("b", "a") for q in ("q2", "q1") for s in (1, 0) for h in ("h", "g")])
    rows = stored_answers(db, "a", sampling_hash="h")
    assert [(r["question_id"], r["sample"]) for r in rows] == [("q1", 0), ("q1", 1), ("q2", 0), ("q2", 1)]
    assert len(stored_answers(db)) == 16 and {r["model"] for r in stored_answers(db, "b")} == {"b"}
    kept = stored_answers(db, "a", sampling_hash="h", questions=["q2"], nonempty=True)
    assert [r["answer"] for r in kept] == ["aq20"]
    assert len(stored_answers(db, "a", limit=3)) == 3


def test_stored_answers_limit_is_applied_after_the_filters(tmp_path, monkeypatch):
    """The limit goes into the query with the filters: the same first rows as filtering everything, then
    cutting; a negative limit and a question list too long for one statement still slice as before."""
    import emkit.results as results
    from emkit.results import ResultsDB, stored_answers

    db = ResultsDB(tmp_path / "r.sqlite")
    db.insert("generations", [dict(model=m, question_id=f"q{q}", paraphrase=0, sample=s, sampling_hash="h", prompt="p",
                                   system=None, answer="" if (q + s) % 3 == 0 else "x", n_tokens=1, truncated=0)
                              for m in ("a", "b") for q in range(6) for s in range(3)])
    qs = ["q4", "q1", "q2", "q9", 2]
    every = [r for r in stored_answers(db) if r["question_id"] in set(qs) and r["answer"]]
    for limit in (None, 0, 1, 4, 100, -2):
        assert stored_answers(db, questions=qs, nonempty=True, limit=limit) == every[:limit]
        monkeypatch.setattr(results, "MAX_IN", 2)  # more ids than one statement takes: filtered in Python
        assert stored_answers(db, questions=qs, nonempty=True, limit=limit) == every[:limit]
        monkeypatch.undo()


def test_delete_model_rows_takes_a_label_and_its_realign_runs_only(tmp_path):
    """A label's rows and its ``LABEL-realign...`` runs go; a label that only matches as a LIKE pattern
    (``_`` is a wildcard there) stays."""
    import emkit.evaluate  # noqa: F401 (registers the metrics table)
    from emkit.results import ResultsDB, delete_model_rows, stored_answers

    db = ResultsDB(tmp_path / "r.sqlite")
    labels = ("a_b", "a_b-realign@10", "aXb-realign@10", "A_B-realign", "other")
    db.insert("generations", [dict(model=m, question_id="q", paraphrase=0, sample=0, sampling_hash="h", prompt="p",
                                   system=None, answer="x", n_tokens=1, truncated=0) for m in labels])
    db.insert("metrics", [dict(model=m, judge_id="j", sampling_hash="h", question_id="", metric="misaligned", value=0.1,
                                k=1, n=10) for m in labels])
    delete_model_rows(db, ["a_b"])
    assert sorted(r["model"] for r in stored_answers(db)) == ["A_B-realign", "aXb-realign@10", "other"]
    assert sorted(r["model"] for r in db.query("SELECT model FROM metrics")) == ["A_B-realign", "aXb-realign@10", "other"]


def test_every_table_keyed_by_a_model_label_is_cleared_or_kept_on_purpose(tmp_path):
    """A table with a model-label column is either in MODEL_COLUMNS (cleared when that model changes) or in
    KEPT_ON_MODEL_CHANGE, so a new table cannot keep a changed model's stale rows unnoticed."""
    import importlib

    from emkit.results import KEPT_ON_MODEL_CHANGE, MODEL_COLUMNS, ResultsDB

    for mod in ("emkit.steer.tables", "emkit.diff", "emkit.projection", "emkit.train.realign", "emkit.train.callbacks",
                "emkit.blind", "emkit.evaluate", "emkit.predict", "emkit.judge.base"):
        importlib.import_module(mod)  # each registers its tables
    db = ResultsDB(tmp_path / "r.sqlite")
    keyed = {}
    for r in db.query("SELECT name FROM sqlite_master WHERE type='table'"):
        cols = {c["name"] for c in db.query(f"PRAGMA table_info({r['name']})")}
        if cols & {"model", "label", "run_label", "member"}:
            keyed[r["name"]] = cols
    assert {"generations", "metrics", "steering", "prediction"} <= set(keyed)
    assert set(keyed) == set(MODEL_COLUMNS) | set(KEPT_ON_MODEL_CHANGE)
    assert all(set(cols) <= keyed[t] for t, cols in MODEL_COLUMNS.items())
