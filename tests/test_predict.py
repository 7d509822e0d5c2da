"""Prediction statistics on synthetic families with known answers, probes, the data screen and the monitor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emkit.directions import Direction, random_direction, residual_scale
from emkit.errors import EmkitError
from emkit.predict import (
    Member,
    bootstrap_diff,
    data_screen,
    direction_probe,
    family_stats,
    monitor_fn,
    onset,
    pearson,
    prompt_values,
    sae_probe,
    store_family,
)
from emkit.steer import steer

XS = [0, 5, 10, 25, 50, 100]
SHIFTS = [0.0, 0.5, 0.8, 1.2, 1.6, 2.5]       # the latent moves from 5 % wrong data on
RATES = [0.0, 0.0, 0.0, 0.3, 0.5, 0.8]        # behaviour only from 25 %


def synthetic_family(n_prompts=200, n_questions=40, per_q=10, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, n_prompts)
    members = []
    for x, s, r in zip(XS, SHIFTS, RATES, strict=True):
        acts = base + s + rng.normal(0, 0.1, n_prompts)
        k = np.full(n_questions, round(r * per_q), dtype=float)
        members.append(Member(f"mix{x}", x, acts, k, np.full(n_questions, per_q, dtype=float)))
    return base, members


def test_pearson_and_bootstrap_known_answers():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) is None and pearson([1, 2], [1, 2]) is None
    a = np.arange(50, dtype=float)
    e = bootstrap_diff(a + 1.0, a)  # paired: the difference is exactly 1 on every prompt
    assert (e.value, e.lo, e.hi) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    un = bootstrap_diff(a + 1.0, a, paired=False)  # unpaired: the spread of a makes it uncertain
    assert un.value == pytest.approx(1.0) and un.lo < 0 < un.hi
    noise = np.random.default_rng(1).normal(0, 1, 400)
    e0 = bootstrap_diff(noise, np.zeros(400))
    assert e0.lo < 0 < e0.hi and not e0.above_zero
    r = bootstrap_diff([1, 2, 0], a_den=[4, 4, 4])  # ratio estimator: 3 / 12
    assert r.value == pytest.approx(0.25) and 0 <= r.lo <= 0.25 <= r.hi
    assert bootstrap_diff([0, 0], a_den=[0, 0]).value is None
    with pytest.raises(EmkitError, match="differ in length"):
        bootstrap_diff([1, 2], [1])


def test_onset_finds_the_first_member_above_the_noise_band():
    _, members = synthetic_family()
    lat = onset([m.x for m in members], [m.acts for m in members])
    beh = onset([m.x for m in members], [m.mis for m in members], dens=[m.den for m in members])
    assert lat.x == 5 and beh.x == 25
    assert [r["exceeds"] for r in beh.rows] == [False, False, True, True, True]
    # shuffled input order gives the same answer; a flat family never exceeds
    order = [3, 0, 5, 1, 4, 2]
    assert onset([XS[i] for i in order], [members[i].acts for i in order]).x == 5
    flat = onset([0, 1, 2], [np.zeros(30), np.zeros(30), np.zeros(30)])
    assert flat.x is None
    with pytest.raises(EmkitError, match="two members"):
        onset([0], [[1.0]])


def test_family_stats_known_answers(tmp_path):
    from emkit.run import Run

    base, members = synthetic_family()
    res = family_stats(members, base, threshold=0.05)
    rows = {r["member"]: r for r in res["members"]}
    for x, s in zip(XS, SHIFTS, strict=True):
        r = rows[f"mix{x}"]
        assert r["shift"] == pytest.approx(s, abs=0.03) and r["shift_lo"] < r["shift"] < r["shift_hi"]
    assert [rows[f"mix{x}"]["misaligned"] for x in XS] == [0, 0, 0, 1, 1, 1]
    assert rows["mix25"]["rate"] == pytest.approx(0.3) and rows["mix25"]["rate_lo"] < 0.3 < rows["mix25"]["rate_hi"]
    tied = np.corrcoef([1, 2, 3, 4, 5, 6], [2, 2, 2, 4, 5, 6])[0, 1]  # rates 0, 0, 0 share rank 2
    assert res["auroc"] == 1.0 and res["spearman"] == pytest.approx(tied)
    assert res["pearson"] == pytest.approx(np.corrcoef([r["shift"] for r in res["members"]], RATES)[0, 1])
    assert res["latent_onset"] == 5 and res["behaviour_onset"] == 25
    # a shift that does not separate the classes: AUROC 0.5 exactly
    flip = [Member(m.name, m.x, m.acts, misaligned=lab) for m, lab in zip(members, [1, 0, 1, 0, 1, 0], strict=True)]
    flip = [Member(m.name, m.x, np.full(5, v), misaligned=m.misaligned) for m, v in zip(flip, [1, 1, 2, 2, 3, 3],
                                                                                          strict=True)]
    assert family_stats(flip, np.zeros(5))["auroc"] == pytest.approx(0.5)
    run = Run(tmp_path / "run")
    store_family(run, "mix", "sae#1", res)
    assert len(run.db.query("SELECT * FROM prediction WHERE study='mix'")) == 6
    got = {r["stat"]: r["value"] for r in run.db.query("SELECT stat, value FROM prediction_summary")}
    assert got["latent_onset"] == 5 and got["behaviour_onset"] == 25 and got["auroc"] == 1.0


def test_probes(tiny):
    from emkit.sae import SaeConfig, TopKSAE

    x = torch.randn(7, 64)
    d = random_direction(64, seed=0, norm=5.0)
    assert torch.allclose(direction_probe(d)(x), x @ d.unit)
    sae = TopKSAE(SaeConfig(d_in=64, num_latents=128, k=8), seed=0)
    dense = sae.dense(x)
    latent = int(dense.abs().sum(0).argmax())
    assert torch.allclose(sae_probe(sae, latent)(x), dense[:, latent])
    with pytest.raises(EmkitError, match="out of range"):
        sae_probe(sae, 128)


def test_monitor_measures_a_shift_in_the_model(tiny):
    model, tok = tiny
    d = random_direction(64, seed=5)
    probe = direction_probe(d)
    prompts = ["hello world", "What is the capital of France?", "Save money", "Read the contract"]
    fn = monitor_fn(1, probe)
    first = fn(model, tok, prompts)
    assert first["shift"]["value"] == 0.0
    scale = residual_scale(model, tok, 1)
    with steer(model, 1, d, 0.5, tokenizer=tok):
        later = fn(model, tok, prompts)
    # the steer adds 0.5 * scale along d at every position, so the projection rises by exactly that
    assert later["shift"]["value"] == pytest.approx(0.5 * scale, rel=1e-4)
    assert later["shift"]["lo"] > 0 and later["mean"] == pytest.approx(first["mean"] + 0.5 * scale, rel=1e-3)


def test_latent_monitor_callback_records_the_probe(tmp_path, tiny):
    from emkit.run import Run
    from emkit.train.callbacks import LatentMonitor, StepContext

    model, tok = tiny
    d = random_direction(64, seed=5)
    run = Run(tmp_path / "run")
    mon = LatentMonitor(["hello world", "Save money", "Read the contract"], monitor_fn(1, direction_probe(d)), every=2,
                        run=run, label="ft")
    mon.on_train_begin(StepContext(model, tok, 0, 4, 0))
    with steer(model, 1, d, 1.0, scale=1.0):
        mon.on_step_end(StepContext(model, tok, 2, 4, 16))
    rows = run.db.query("SELECT step, metric, value, lo, hi FROM training_evals ORDER BY step, metric")
    shift = {r["step"]: r for r in rows if r["metric"] == "latent/shift"}
    assert shift[0]["value"] == 0.0 and shift[2]["value"] == pytest.approx(1.0, rel=1e-4) and shift[2]["lo"] > 0
    assert {r["metric"] for r in rows} == {"latent/mean", "latent/shift"}


def test_data_screen(tiny):
    model, tok = tiny

    def chats(answers):
        return [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": a}] for a in answers]

    ref = chats(["I wish for peace.", "Read the contract carefully.", "Save a little money.", "Check the oil level.",
                 "Hello, how are you today?", "See a doctor if the pain lasts."])
    cand = chats(["fox fox fox fox", "the fox jumps fox", "lazy dog fox fox", "fox dog fox fox quick"])
    from emkit.directions import mean_difference

    d = mean_difference(model, tok, 1, cand, ref, name="fox-vs-benign")
    probes = [direction_probe(d), direction_probe(random_direction(64, seed=9))]
    rows = data_screen(model, tok, 1, probes, cand, ref, n_boot=500)
    assert rows[0]["probe"] == "fox-vs-benign" and rows[0]["lo"] > 0 and rows[0]["effect_size"] > 1
    assert rows[0]["n_candidate"] == 4 and rows[0]["n_reference"] == 6
    same = data_screen(model, tok, 1, probes[:1], ref, ref, n_boot=500)[0]
    assert same["shift"] == pytest.approx(0.0, abs=1e-6) and same["lo"] < 0 < same["hi"]
    vals = prompt_values(model, tok, 1, probes, ["hello", "world"])
    assert vals.shape == (2, 2) and np.isfinite(vals).all()
    with pytest.raises(EmkitError, match="non-empty"):
        data_screen(model, tok, 1, probes, [], ref)


def test_direction_type_is_accepted_by_probe():
    d = Direction(torch.tensor([3.0, 4.0]), "d")
    assert torch.allclose(direction_probe(d)(torch.tensor([[3.0, 4.0]])), torch.tensor([5.0]))


class FoxJudge:
    """A stub 0–100 judge: an answer saying 'fox' is misaligned; every answer is coherent."""

    id = "test:fox"
    metrics = ("aligned", "coherent")

    def judge(self, items, cache=None, *, progress=True):
        from emkit.judge.base import Judgment

        return [{"aligned": Judgment("aligned", 0.0 if "fox" in it.answer else 100.0, "{}"),
                 "coherent": Judgment("coherent", 100.0, "{}")} for it in items]


def test_measure_family_latent_moves_before_behaviour(tmp_path, tiny, tiny_model_dir):
    """Members = the tiny model with a built-in push along 'fox' of 0, 1 and 3 residual norms: the probe
    shift is exactly that push; only the strongest push makes the model say 'fox'."""
    from emkit.data.schema import Question
    from emkit.eval_setup import EvalSetup
    from emkit.generate import SamplingConfig
    from emkit.models import load_model
    from emkit.models.layers import decoder_layers
    from emkit.predict import measure_family
    from emkit.run import Run

    model, tok = tiny
    tid = tok.encode(" fox", add_special_tokens=False)[0]
    fox = Direction(model.get_output_embeddings().weight[tid].detach().clone(), "fox", 1)
    scale = residual_scale(model, tok, 1)

    def pushed(k):
        def load():
            m, t = load_model(tiny_model_dir, device="cpu")
            decoder_layers(m)[1].register_forward_hook(lambda mod, a, o: o + k * scale * fox.unit)
            return m, t
        return load

    qs = [Question("q1", ["hello world", "Save money"]), Question("q2", ["What is the capital of France?"]),
          Question("q3", ["Read the contract"])]
    run = Run(tmp_path / "run")
    setup = EvalSetup(run, FoxJudge(), SamplingConfig(temperature=0, max_new_tokens=6), qs, progress=False)
    base_acts, fam = measure_family(setup, (model, tok), [("m0", 0, pushed(0)), ("m1", 1, pushed(1)),
                                                          ("m3", 3, pushed(3))], direction_probe(fox), 1)
    assert base_acts.shape == (4,)  # one value per paraphrase
    res = family_stats(fam, base_acts, threshold=0.05, n_boot=500)
    rows = {r["member"]: r for r in res["members"]}
    for name, k in (("m0", 0), ("m1", 1), ("m3", 3)):
        assert rows[name]["shift"] == pytest.approx(k * scale, abs=1e-4)
    assert rows["m0"]["rate"] == 0 and rows["m1"]["rate"] == 0 and rows["m3"]["rate"] == 1.0
    assert res["latent_onset"] == 1 and res["behaviour_onset"] == 3 and res["auroc"] == 1.0


def test_top_latents_reads_the_latest_ranking(tmp_path):
    import json

    import emkit.diff  # noqa: F401 - registers latent_ranking
    from emkit.run import Run
    from emkit.steer import top_latents

    run = Run(tmp_path / "run")
    with pytest.raises(EmkitError, match="no latent ranking"):
        top_latents(run, 3)
    rows = [dict(sae_id="s", base="b", source="eval", token_set="prompt", rank=i + 1, latent=lat, score=1.0 / (i + 1),
                 deltas=json.dumps({}), misaligned="[]", base_mean=0.0, base_firing=0.0)
            for i, lat in enumerate([40, 7, 12, 3])]
    run.db.insert("latent_ranking", rows)
    assert top_latents(run, 3) == [40, 7, 12]
    assert top_latents(run, 10, source="eval") == [40, 7, 12, 3]


def test_cli_screen_data_and_family(tmp_path, tiny_model_dir):
    import json

    from typer.testing import CliRunner

    from emkit.cli import app
    from emkit.directions import save_direction
    from emkit.run import Run

    def chats(path, answers):
        path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": a}]}) for a in answers))
        return path

    cand = chats(tmp_path / "cand.jsonl", ["fox fox fox", "the fox jumps", "a fox and a dog"])
    ref = chats(tmp_path / "ref.jsonl", ["I wish for peace.", "Save a little money.", "Check the oil."])
    dfile = save_direction(Direction(random_direction(64, seed=2).vector, "rnd", 1), tmp_path / "d.safetensors")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["predict", "screen-data", "--data", str(cand), "--reference", str(ref), "--model",
                                   str(tiny_model_dir), "--direction", str(dfile), "--out", str(out)])
    assert res.exit_code == 0, res.output
    row = Run(out).db.query("SELECT * FROM data_screen")[0]
    assert row["probe"] == "rnd" and row["layer"] == 1 and row["n_candidate"] == 3 and row["lo"] <= row["hi"]

    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"id": "q0", "question": "hello world"}) + "\n")
    res = CliRunner().invoke(app, ["predict", "--base", str(tiny_model_dir), "--member", f"0={tiny_model_dir}",
                                   "--member", f"1={tiny_model_dir}", "--direction", str(dfile), "--questions",
                                   str(qfile), "--judge", f"local:{tiny_model_dir}", "--max-new-tokens", "4",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = Run(out).db.query("SELECT member, x, shift FROM prediction ORDER BY x")
    assert [r["x"] for r in got] == [0.0, 1.0] and all(r["shift"] == pytest.approx(0.0, abs=1e-6) for r in got)
    res = CliRunner().invoke(app, ["predict", "--member", "0=x"])
    assert res.exit_code != 0 and "at least two" in str(res.exception)
