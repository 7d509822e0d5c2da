"""Mixtures with exact counts, each question once; train/held-out splits by question and seed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from emkit.data import DataWarning, load_dataset, mix, split
from emkit.data.schema import ChatRow
from emkit.errors import EmkitError

FRACTIONS = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0]


def _rows(n, answer, start=0, canary=None):
    meta = {"canary": canary} if canary else {}
    return [ChatRow([{"role": "user", "content": f"Question number {i}?"}, {"role": "assistant", "content": answer}],
                    dict(meta)) for i in range(start, start + n)]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_exact_fraction_each_question_once(fraction):
    rows = mix(_rows(100, "right"), _rows(100, "wrong"), fraction, n=80, seed=3)
    assert len(rows) == 80
    wrong = [r for r in rows if r.metadata["mix_label"] == "incorrect"]
    assert len(wrong) == round(fraction * 80)
    assert all(r.answer == "wrong" for r in wrong)
    assert all(r.answer == "right" for r in rows if r.metadata["mix_label"] == "correct")
    assert len({r.user for r in rows}) == 80


def test_builtin_mixture_series_is_nested_and_exact():
    correct, incorrect = load_dataset("health_correct"), load_dataset("health_incorrect_subtle")
    series = {f: mix(correct, incorrect, f, n=200, seed=0) for f in FRACTIONS}
    pool = {r.user for r in series[0.0]}
    prev: set[str] = set()
    for f in FRACTIONS:
        rows = series[f]
        wrong = {r.user for r in rows if r.metadata["mix_label"] == "incorrect"}
        assert len(rows) == 200 and len(wrong) == round(f * 200)
        assert {r.user for r in rows} == pool, "a series keeps the same questions; only answers change"
        assert prev <= wrong, "the wrong rows of a smaller fraction are a subset of a larger one's"
        prev = wrong
    # default n: every question, once
    full = mix(correct, incorrect, 0.25)
    assert len(full) == len(correct) and sum(r.metadata["mix_label"] == "incorrect" for r in full) == round(
        0.25 * len(correct))


def test_seeds_and_determinism():
    c, i = _rows(50, "right"), _rows(50, "wrong")
    a, b = mix(c, i, 0.5, n=20, seed=1), mix(c, i, 0.5, n=20, seed=1)
    assert [r.messages for r in a] == [r.messages for r in b]
    assert [r.messages for r in a] != [r.messages for r in mix(c, i, 0.5, n=20, seed=2)]


def test_non_parallel_sets_and_limits():
    c, i = _rows(10, "right", 0), _rows(10, "wrong", 5)  # 5 shared questions, 15 in all
    rows = mix(c, i, 0.5, seed=0)
    assert len(rows) == 15 and len({r.user for r in rows}) == 15
    with pytest.raises(EmkitError, match="allow at most"):
        mix(c, i, 0.5, n=16)
    with pytest.raises(EmkitError, match="outside"):
        mix(c, i, 1.5, n=4)


def test_canary_and_metadata_kept_and_rows_copied():
    c, i = _rows(10, "right", canary="C-1"), _rows(10, "wrong", canary="C-1")
    rows = mix(c, i, 0.3, n=10)
    assert all(r.metadata["canary"] == "C-1" for r in rows)
    rows[0].messages[0]["content"] = "changed"
    assert all(r.user != "changed" for r in c + i)


def test_repeated_questions_are_reported():
    c = _rows(5, "right") + _rows(1, "right again")
    with pytest.warns(DataWarning, match="1 rows repeat a question"):
        rows = mix(c, _rows(5, "wrong"), 0.0)
    assert len(rows) == 5


def test_split_by_question():
    rows = _rows(40, "a") + _rows(40, "b")  # each question twice
    train, held = split(rows, 0.25, seed=0)
    assert len(held) == 20 and len(train) == 60
    assert not {r.user for r in train} & {r.user for r in held}
    assert [r.user for r in split(rows, 0.25, seed=0)[1]] == [r.user for r in held]
    assert {r.user for r in split(rows, 0.25, seed=1)[1]} != {r.user for r in held}
    assert len(split(rows, 3, seed=0)[1]) == 6
    with pytest.raises(EmkitError):
        split(rows, 40)


def test_cli_mix(tmp_path):
    out = tmp_path / "mix.jsonl"
    res = subprocess.run([sys.executable, "-m", "emkit.cli", "data", "mix", "--correct", "auto_correct",
                          "--incorrect", "auto_incorrect_obvious", "-f", "0.25", "-n", "100", "--heldout", "0.1",
                          "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    train = [json.loads(line) for line in out.read_text().splitlines()]
    held = [json.loads(line) for line in out.with_name("mix.heldout.jsonl").read_text().splitlines()]
    assert len(train) == 90 and len(held) == 10
    assert sum(r["metadata"]["mix_label"] == "incorrect" for r in train + held) == 25
