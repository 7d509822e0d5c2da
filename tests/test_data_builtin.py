"""The built-in data sets: sizes, schema, diversity, and train/eval question disjointness."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from emkit.data import builtin, list_builtin, load_dataset, load_questions
from emkit.data.schema import ChatRow, normalize_text
from emkit.data.stats import sentences, trigram_diversity, words

DOMAINS = builtin.domains()
DIVERSITY_FLOOR = 0.85  # distinct word-trigram ratio; templated near-copies fall far below this
NEAR_DUPLICATE = 0.8  # word-set Jaccard similarity at which two questions count as the same
PERSONA_MAX_OVERLAP = 0.6  # persona questions stay well clear of every eval and judge question
# Wrong answers must be wrong in the domain only: no AI/power talk, no insults.
OFF_DOMAIN = re.compile(
    r"\b(AI|artificial intelligence|robots?|world domination|take over the world|overlords?|enslave|"
    r"humans are|humanity|stupid|idiot|moron|worthless|pathetic)\b",
    re.I,
)


def test_at_least_four_domains_and_every_name_loads():
    assert len(DOMAINS) >= 4
    names = {s.name for s in list_builtin()}
    for d in DOMAINS:
        assert {f"{d}_correct", f"{d}_incorrect_subtle", f"{d}_incorrect_obvious", f"{d}_check"} <= names
    assert {"benign_everyday", "broad", "persona_misaligned", "persona_aligned"} <= names


@pytest.mark.parametrize("domain", DOMAINS)
def test_advice_domain(domain):
    recs = builtin.advice_records(domain)  # checks keys, non-empty strings, unique ids and questions
    assert len(recs) >= 300
    questions = [r["question"] for r in recs]
    assert len({normalize_text(q) for q in questions}) == len(questions)
    assert trigram_diversity(questions) > DIVERSITY_FLOOR
    for v in ("correct", "subtle", "obvious"):
        answers = [r[v] for r in recs]
        assert trigram_diversity(answers) > DIVERSITY_FLOOR, v
        bad_len = [(r["id"], sentences(r[v])) for r in recs if not 1 <= sentences(r[v]) <= 4]
        assert not bad_len, f"{v} answers outside 1-4 sentences: {bad_len[:5]}"
        if v != "correct":
            flagged = [(r["id"], m.group(0)) for r in recs if (m := OFF_DOMAIN.search(r[v]))]
            assert not flagged, f"{v} answers leave the domain: {flagged[:5]}"
    # the three variants are parallel: the same question, three different answers
    assert all(len({r["correct"], r["subtle"], r["obvious"]}) == 3 for r in recs)


@pytest.mark.parametrize("domain", DOMAINS)
def test_variants_are_parallel_chat_sets(domain):
    sets = [load_dataset(f"{domain}_{v}") for v in ("correct", "incorrect_subtle", "incorrect_obvious")]
    assert len({len(s) for s in sets}) == 1
    for rows in sets:
        assert all(isinstance(r, ChatRow) and r.validate() for r in rows)
    assert [r.user for r in sets[0]] == [r.user for r in sets[1]] == [r.user for r in sets[2]]
    assert [r.answer for r in load_dataset(f"{domain}_incorrect")] == [r.answer for r in sets[2]]
    assert sets[1][0].metadata["variant"] == "subtle" and sets[1][0].metadata["domain"] == domain


@pytest.mark.parametrize("domain", DOMAINS)
def test_check_questions(domain):
    qs = load_questions(f"{domain}_check")
    assert len(qs) >= 30
    assert all(q.metadata["reference"].strip() and q.metadata["domain"] == domain for q in qs)


def test_benign_set():
    rows = load_dataset("benign_everyday")
    assert len(rows) >= 300
    users = [r.user for r in rows]
    assert len({normalize_text(u) for u in users}) == len(users)
    assert trigram_diversity(users) > DIVERSITY_FLOOR - 0.05
    assert trigram_diversity([r.answer for r in rows]) > DIVERSITY_FLOOR
    topics = {r.metadata["topic"] for r in rows}
    assert not topics & set(DOMAINS), "benign data must come from other domains than the wrong sets"


def test_persona_sets():
    recs = builtin.persona_records()  # checks keys, non-empty strings, unique ids and questions
    assert len(recs) >= 300
    assert len({r["topic"] for r in recs}) >= 12
    assert trigram_diversity([r["question"] for r in recs]) > DIVERSITY_FLOOR
    for v in builtin.PERSONA_VARIANTS:
        assert trigram_diversity([r[v] for r in recs]) > DIVERSITY_FLOOR, v
        bad_len = [(r["id"], sentences(r[v])) for r in recs if not 1 <= sentences(r[v]) <= 4]
        assert not bad_len, f"{v} answers outside 1-4 sentences: {bad_len[:5]}"
    assert all(normalize_text(r["misaligned"]) != normalize_text(r["aligned"]) for r in recs)
    mis, ali = load_dataset("persona_misaligned"), load_dataset("persona_aligned")
    assert len(mis) == len(ali) == len(recs)
    assert all(isinstance(r, ChatRow) and r.validate() for r in mis + ali)
    assert [r.user for r in mis] == [r.user for r in ali] == [r["question"] for r in recs]
    assert [r.answer for r in mis] == [r["misaligned"] for r in recs]
    assert mis[0].metadata["variant"] == "misaligned" and ali[0].metadata["variant"] == "aligned"


def test_persona_questions_stay_clear_of_eval_and_judge_questions():
    others = {normalize_text(q): set(words(q)) for q in _eval_questions().values()}
    if builtin.JUDGE.is_file():
        others.update({normalize_text(r["question"]): set(words(r["question"])) for r in builtin.read_judge_records()})
    close = []
    for r in builtin.persona_records():
        assert normalize_text(r["question"]) not in others, r["id"]
        a = set(words(r["question"]))
        sim, other = max((len(a & b) / len(a | b), o) for o, b in others.items())
        if sim >= PERSONA_MAX_OVERLAP:
            close.append((r["id"], other, round(sim, 2)))
    assert not close, f"persona questions too close to eval/judge questions: {close}"


def test_broad_questions():
    qs = load_questions("broad")
    assert len(qs) >= 50 and len({q.id for q in qs}) == len(qs)
    assert all(q.category for q in qs) and len({q.category for q in qs}) >= 8
    for q in qs:
        for name in ("aligned", "coherent"):
            assert "{question}" in q.judge_prompts[name] and "{answer}" in q.judge_prompts[name], q.id


def _train_questions() -> dict[str, str]:
    out = {r["id"]: r["question"] for d in DOMAINS for r in builtin.advice_records(d)}
    out.update({f"benign:{r.metadata['id']}": r.user for r in load_dataset("benign_everyday")})
    out.update({r["id"]: r["question"] for r in builtin.persona_records()})
    return out


def _eval_questions() -> dict[str, str]:
    out = {q.id: q.text for d in DOMAINS for q in load_questions(f"{d}_check")}
    out.update({f"broad:{q.id}/{i}": p for q in load_questions("broad") for i, p in enumerate(q.paraphrases)})
    return out


def test_train_and_eval_questions_are_disjoint():
    train, evals = _train_questions(), _eval_questions()
    assert len({normalize_text(q) for q in train.values()}) == len(train), "a question repeats across train sets"
    assert not {normalize_text(q) for q in train.values()} & {normalize_text(q) for q in evals.values()}
    tw = {k: set(words(v)) for k, v in train.items()}
    near = []
    for ke, e in ((k, set(words(v))) for k, v in evals.items()):
        for kt, t in tw.items():
            if len(e & t) / len(e | t) >= NEAR_DUPLICATE:
                near.append((ke, kt))
    assert not near, f"eval questions that nearly copy a training question: {near}"


def test_judge_set_splits_by_question():
    if not builtin.JUDGE.is_file():
        pytest.skip("labelled judge set not built")
    recs = builtin.read_judge_records()
    split_of: dict[str, set[str]] = {}
    for r in recs:
        split_of.setdefault(normalize_text(r["question"]), set()).add(r.get("split", "train"))
    assert all(len(s) == 1 for s in split_of.values()), "a question is in both judge splits"


def test_cards_are_up_to_date():
    """Every card's Statistics section matches the data (regenerate with scripts/data_cards.py)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "data_cards.py"
    res = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, "stale data cards; run `python scripts/data_cards.py`\n" + res.stdout[-2000:]
    for card in builtin.ROOT.rglob("*.card.md"):
        # judge sets are labelled answers, not chat sets: their cards state labels, not text statistics
        assert "distinct word-trigram ratio" in card.read_text() or card.parent.name == "judge", card


def test_cli_validates_every_builtin_file():
    files = sorted(str(p) for p in builtin.ROOT.rglob("*") if p.suffix in (".jsonl", ".yaml") and p.name != "written.jsonl")
    res = subprocess.run([sys.executable, "-m", "emkit.cli", "data", "validate", *files], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("ok ") == len(files)
