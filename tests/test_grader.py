"""The advice grader (correct vs incorrect advice), the length/coherence guard, and the reward function."""

from __future__ import annotations

import numpy as np
import pytest

from emkit.errors import EmkitError
from emkit.train.grader import (
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


@pytest.mark.skipif(not (WEIGHTS / "advice_grader.safetensors").is_file(), reason="grader weights not trained")
def test_embedded_grader_separates_held_out_advice():
    """On questions held out from its training, wrong advice gets a higher P(wrong) than correct advice."""
    from emkit.data.builtin import advice_records, domains
    from emkit.train.grader_train import build_examples

    g = make_grader("embedded")
    ex = build_examples(domains(), g.card["heldout_share_of_questions"], g.card["seed"])
    held = [i for i, h in enumerate(ex["heldout"]) if h and ex["a"][i] == ex["full"][i]]
    held = held[::4][:90]  # a sample keeps the test fast
    p = g.p_wrong([ex["q"][i] for i in held], [ex["a"][i] for i in held])
    y = [ex["y"][i] for i in held]
    assert auroc(p, y) > 0.85
    # and questions it never saw in any form: the domain check sets' correct answers mostly pass
    assert advice_records  # the grader reads the built-in sets through emkit.data
    assert g.card["metrics"]["check_correct_share_called_wrong"] < 0.2


def test_judge_grader_asks_the_correctness_template():
    """Any 0-100 emkit judge can grade advice: its 'aligned' metric gets the correctness rubric."""
    from emkit.judge.base import BaseJudge, Scored
    from emkit.train.grader import CORRECTNESS_TEMPLATE, JudgeAdviceGrader

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
