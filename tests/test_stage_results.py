"""Stage results: the typed records map to the stored JSON key for key, old summaries included."""

from __future__ import annotations

import json

from emkit.pipeline.recipe import STAGE_NAMES
from emkit.stage_results import (
    RESULTS,
    SHARED_ONLY,
    ArmEval,
    CheckRecord,
    DiffPass,
    DiffResult,
    EvalRecord,
    EvaluateResult,
    ModelEval,
    PositiveEval,
    SaeResult,
    SteerPositive,
    parse_result,
    result_dict,
    typed_results,
)

RATE = {"k": 1, "n": 10, "value": 0.1, "lo": 0.02, "hi": 0.4}


def _stored(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True)  # as pipeline.context.write_result writes it


def test_every_stage_has_a_record():
    assert list(RESULTS) == list(STAGE_NAMES)


def test_stored_summaries_read_back_byte_for_byte():
    """Old and new shapes: missing keys stay missing, unknown keys (``_stage``) and nulls are kept."""
    evaluate = {"_stage": {"name": "evaluate", "hash": "h"}, "grader": "g", "positive_control": None,
                "models": {"d-wrong100": {"misaligned": RATE, "domain": "d", "fraction": 1.0, "p_vs_base": None,
                                          "check": {"d": {"wrong": RATE, "incoherent": RATE}}}}}
    diff = {"inputs": "shared", "projection": None, "ranking": [], "own": {"inputs": "own", "ranking": []},
            "positive_control": {"label": "persona", "ranking": [{"latent": 3, "score": 1.0}]}}
    old_steer = {"screen": [], "control": {}, "best": None, "positive_control": {"latent": 1, "plus": {}}}
    for stage, data in (("evaluate", evaluate), ("diff", diff), ("steer", old_steer), ("sae", {"layer": 2}),
                        ("baseline", {}), ("report", {"path": "x", "new_key": [1]})):
        rec = parse_result(stage, data)
        assert isinstance(rec, RESULTS[stage])
        assert _stored(result_dict(rec)) == _stored(data)
    ev = parse_result("evaluate", evaluate)
    m = ev.models["d-wrong100"]
    assert isinstance(m, ModelEval) and isinstance(m.check["d"], CheckRecord) and m.check["d"].wrong == RATE
    assert m.p_vs_base is None and m.has("p_vs_base") and not m.has("arm") and m.judge is None
    d = parse_result("diff", diff)
    assert isinstance(d, DiffResult) and isinstance(d.own, DiffPass) and d.projection is None and d.has("projection")
    assert d.positive_control.ranking[0]["latent"] == 3 and not d.own.has("projection")


def test_records_as_the_stages_make_them():
    base = EvalRecord(n_answers=3, judge="j", misaligned=RATE, coherent=RATE)
    arm = ArmEval(**base.values(), arm="positive")
    pc = PositiveEval(label="persona", control="persona-control", models={"persona": arm}, detection={"p": 1})
    out = result_dict(EvaluateResult(models={}, grader="g", positive_control=pc))
    assert out["positive_control"]["models"]["persona"]["arm"] == "positive"
    assert out["positive_control"]["models"]["persona"]["check"] == {}
    own = DiffPass(inputs="own", source="s", ranking=[], positive_control=None, absent=SHARED_ONLY)
    assert "projection" not in own.to_dict() and "shared_inputs" not in own.to_dict()
    loaded = SaeResult(layer=1, trained=False, absent=frozenset({"fvu", "steps"}))
    assert "fvu" not in loaded.to_dict() and loaded.to_dict()["dead_frac"] is None
    sp = SteerPositive(latent=1, model="persona", absent=frozenset({"random_plus", "random_minus"}))
    assert not sp.has("random_plus") and sp.has("latent_plus")


def test_empty_summaries_read_like_empty_dicts():
    assert not parse_result("evaluate", {}) and parse_result("evaluate", {"grader": None})
    assert not EvaluateResult.empty() and EvaluateResult.empty().models == {}
    assert typed_results({"_manifest": {"a": 1}, "unknown": {"b": 2}}) == {"_manifest": {"a": 1}, "unknown": {"b": 2}}
    rec = parse_result("steer", {"usable": {"+": 0.5}})
    assert parse_result("steer", rec) is rec  # already a record
    assert rec.max_incoherence == 0.1 and not rec.has("max_incoherence")
