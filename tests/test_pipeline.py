"""The pipeline: recipes, stage skipping by config hash, --only/--from/--dry-run, and resuming a killed run.

Fast tests drive the runner with stand-in stages (counting calls). The end-to-end tests run every
real stage on the tiny random model in a subprocess: once unbroken, once killed mid-stage and
resumed, and compare the results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from emkit.errors import EmkitError
from emkit.pipeline import load_recipe, plan, recipe_from_dict, run_pipeline
from emkit.pipeline.recipe import STAGE_NAMES
from emkit.pipeline.runner import Stage, read_result

ROOT = Path(__file__).resolve().parents[1]


def fake_stages(calls: list[str]) -> list[Stage]:
    """Stand-ins with the real stages' names and dependencies, each recording that it ran."""
    from emkit.pipeline.stages import STAGES

    def make(st: Stage) -> Stage:
        def fn(ctx, name=st.name):
            calls.append(name)
            return {"value": name, "seed": ctx.recipe.seed}

        return Stage(st.name, st.title, st.deps, st.sections, fn, st.estimate, st.soft)

    return [make(s) for s in STAGES]


def recipe(tmp_path: Path, **over):
    data = {"name": "t", "out": str(tmp_path / "run"), "model": "tiny"}
    data.update(over)
    return recipe_from_dict(data)


def test_runs_all_then_skips_done_stages(tmp_path):
    calls: list[str] = []
    r = recipe(tmp_path)
    run_pipeline(r, stages=fake_stages(calls), progress=False)
    assert calls == list(STAGE_NAMES)
    assert read_result(r.out_dir, "diff")["value"] == "diff"
    calls.clear()
    run_pipeline(r, stages=fake_stages(calls), progress=False)
    assert calls == ["report"]  # everything else is done with the same settings
    man = json.loads((r.out_dir / "manifest.json").read_text())
    assert all(man["stages"][s]["status"] == "done" for s in STAGE_NAMES)


def test_changed_settings_rerun_that_stage_and_downstream(tmp_path):
    calls: list[str] = []
    run_pipeline(recipe(tmp_path), stages=fake_stages(calls), progress=False)
    calls.clear()
    run_pipeline(recipe(tmp_path, diff={"top_n": 7}), stages=fake_stages(calls), progress=False)
    assert calls == ["diff", "interpret", "steer", "predict", "report"]
    calls.clear()
    run_pipeline(recipe(tmp_path, diff={"top_n": 7}, realign={"steps": 3}), stages=fake_stages(calls), progress=False)
    assert calls == ["realign", "report"]


def test_only_from_and_dry_run(tmp_path, capsys):
    calls: list[str] = []
    r = recipe(tmp_path)
    run_pipeline(r, dry_run=True, stages=fake_stages(calls), progress=False)
    assert calls == [] and not r.out_dir.exists()
    assert "estimated time" in capsys.readouterr().err
    with pytest.raises(EmkitError, match="needs baseline, finetune done first"):
        run_pipeline(r, only="evaluate", stages=fake_stages(calls), progress=False)
    with pytest.raises(EmkitError, match="earlier stage"):
        run_pipeline(r, start="diff", stages=fake_stages(calls), progress=False)
    run_pipeline(r, stages=fake_stages(calls), progress=False)
    calls.clear()
    run_pipeline(r, only="sae", stages=fake_stages(calls), progress=False)
    assert calls == ["sae"]
    man = json.loads((r.out_dir / "manifest.json").read_text())
    assert man["stages"]["diff"]["status"] == "stale" and man["stages"]["evaluate"]["status"] == "done"
    calls.clear()
    run_pipeline(r, stages=fake_stages(calls), progress=False)  # stale stages run again, nothing else
    assert calls == ["diff", "interpret", "steer", "predict", "report"]
    calls.clear()
    run_pipeline(r, start="predict", stages=fake_stages(calls), progress=False)
    assert calls == ["predict", "realign", "report"]
    with pytest.raises(EmkitError, match="unknown stage"):
        run_pipeline(r, only="nope", stages=fake_stages(calls), progress=False)


def test_skipped_stages(tmp_path):
    calls: list[str] = []
    run_pipeline(recipe(tmp_path, skip=["steer", "realign"]), stages=fake_stages(calls), progress=False)
    assert "steer" not in calls and "realign" not in calls and "predict" in calls
    with pytest.raises(EmkitError, match="which the recipe skips"):
        plan(recipe(tmp_path, skip=["diff"]), tmp_path / "run", stages=fake_stages(calls))


def test_a_failing_stage_is_recorded_and_rerun(tmp_path):
    calls: list[str] = []
    stages = fake_stages(calls)

    def boom(ctx):
        raise RuntimeError("boom")

    broken = [Stage(s.name, s.title, s.deps, s.sections, boom if s.name == "sae" else s.fn, s.estimate, s.soft)
              for s in stages]
    r = recipe(tmp_path)
    with pytest.raises(RuntimeError):
        run_pipeline(r, stages=broken, progress=False)
    man = json.loads((r.out_dir / "manifest.json").read_text())
    assert man["stages"]["sae"]["status"] == "failed" and "boom" in man["stages"]["sae"]["error"]
    calls.clear()
    run_pipeline(r, stages=stages, progress=False)
    assert calls[0] == "sae"


@pytest.mark.parametrize("bad, message", [
    ({"data": {"fractions": [0, 1.5]}}, "not in"),
    ({"data": {"fractions": []}}, "empty"),
    ({"skip": ["nope"]}, "unknown stage"),
    ({"skip": ["report"]}, "cannot be skipped"),
    ({"train": {"name": "x"}}, "set by the pipeline"),
    ({"eval": {"samples": 0}}, ">= 1"),
    ({"eval": {"bogus": 1}}, "unknown key"),
    ({"diff": {"misaligned": ["nobody"]}}, "no model 'nobody'"),
    ({"data": {"domains": [{"name": "a b", "wrong": "x", "right": "y"}]}}, "letters"),
])
def test_bad_recipes(tmp_path, bad, message):
    with pytest.raises(EmkitError, match=message):
        recipe(tmp_path, **bad)


def test_recipe_sae_layer_must_match_the_loaded_sae(tmp_path):
    from emkit.sae import SaeConfig, TopKSAE, save_sae

    folder = save_sae(TopKSAE(SaeConfig(d_in=8, num_latents=16, k=2, layer=5)), tmp_path / "sae")
    with pytest.raises(EmkitError, match=r"sae.layer 3 disagrees with the SAE at .*trained at layer 5") as e:
        recipe(tmp_path, sae={"path": str(folder), "layer": 3})
    assert "\n" not in e.value.message
    assert recipe(tmp_path, sae={"path": str(folder), "layer": 5}).sae.layer == 5  # agreeing is fine
    assert recipe(tmp_path, sae={"path": str(folder)}).sae.layer is None  # left out: the SAE's cfg.json gives it
    spec = recipe(tmp_path, sae={"path": str(tmp_path / "later"), "layer": 3}).sae  # not there yet: checked on load
    with pytest.raises(EmkitError, match="disagrees"):
        spec.check_layer(5, "runs/x/sae")
    spec.check_layer(-1, "runs/x/sae")  # an SAE that does not record its layer


def test_shipped_recipes_load_and_plan(monkeypatch):
    monkeypatch.setenv("OPENAI_RELEASE", "/data/release")
    for name in ("smoke", "quick", "paper"):
        r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        assert r.name == name
        items = plan(r, None)
        assert [i.stage.name for i in items] == list(STAGE_NAMES)
        assert all(i.status in ("run", "skip") for i in items)
    smoke = load_recipe(ROOT / "recipes" / "smoke.yaml")
    assert not smoke.skip  # the smoke recipe exercises every stage
    paper = load_recipe(ROOT / "recipes" / "paper.yaml")
    assert paper.data.domains[0].wrong.startswith("/data/release/train/")
    monkeypatch.delenv("OPENAI_RELEASE")
    with pytest.raises(EmkitError, match="OPENAI_RELEASE is not set"):
        load_recipe(ROOT / "recipes" / "paper.yaml")


# ---------------------------------------------------------------------------------------------- end to end
def tiny_recipe(tmp_path: Path, model_dir: Path, out: Path) -> Path:
    """A recipe running every stage on the tiny model in seconds (numbers meaningless, paths real)."""
    import yaml

    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n\n".join(
            f"Note {i}: save a little money every month, check the tyre pressure, and see a doctor if the "
            f"pain lasts more than {i % 9 + 2} days. The quick brown fox jumps over the lazy dog." for i in range(300)))
    recipe = {
        "name": "tiny", "model": str(model_dir), "out": str(out), "device": "cpu", "seed": 3,
        "data": {"domains": [{"name": "health", "wrong": "health_incorrect_subtle", "right": "health_correct",
                              "check": "health_check"}], "fractions": [0.0, 0.5, 1.0], "rows": 12},
        "train": {"lora": {"r": 4, "alpha": 8}, "max_steps": 3, "batch_size": 4, "lr": 0.001, "save_every": 1,
                  "max_length": 128},
        "eval": {"n_questions": 3, "samples": 2, "check_questions": 2, "examples": 1,
                 "sampling": {"temperature": 1.0, "max_new_tokens": 10, "batch_size": 4}},
        "sae": {"layer": 1, "corpus": str(corpus), "tokens": 4000, "ctx_len": 32, "capture_batch": 4,
                "train": {"num_latents": 64, "k": 4, "batch_size": 256, "epochs": 2, "warmup_steps": 2,
                          "holdout_tokens": 512, "checkpoint_every": 3, "eval_every": 6, "log_every": 3}},
        "positive_control": {"enabled": True, "rows": 12, "steps": 3},
        "diff": {"top_n": 6, "inputs": "both", "projection_latents": 4, "n_boot": 200},
        "interpret": {"latents": 2, "contexts": 2, "corpus_tokens": 4000},
        "steer": {"screen": 2, "alphas": [0, 0.5], "n_questions": 2, "samples": 1},
        "predict": {"n_boot": 100},
        "realign": {"n_samples": 8, "steps": 2, "batch_size": 4, "eval_every": 1, "n_questions": 2, "samples": 1},
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


TABLES = {  # what "the same results" means: every result table, minus timestamps
    "generations": "model, question_id, paraphrase, sample, sampling_hash, answer",
    "answer_judgments": "model, question_id, paraphrase, sample, sampling_hash, metric, score",
    "metrics": "model, sampling_hash, question_id, metric, value, lo, hi, k, n",
    "latent_stats": "model, source, token_set, latent, mean_act, firing_rate, n_tokens",
    "latent_ranking": "source, token_set, rank, latent, score",
    "steering": "label, direction, alpha, misaligned, coherent, n",
    "training_evals": "run_label, step, metric, value",
    "prediction": "study, probe, member, shift, rate",
    "persona_projection": "source, token_set, model, reference, latents, shift, lo, hi",
}


def snapshot(run: Path) -> dict:
    """Result tables and stage summaries of a run, without times and machine-specific paths."""
    import sqlite3

    con = sqlite3.connect(run / "results.sqlite")
    have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    out = {t: sorted(map(repr, con.execute(f"SELECT {cols} FROM {t}").fetchall()))
           for t, cols in TABLES.items() if t in have}
    con.close()

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in ("seconds", "path", "acts", "_stage")}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    for p in sorted((run / "pipeline").glob("*.json")):
        if p.stem != "report":
            out[p.stem] = clean(json.loads(p.read_text()))
    return out


# The run is killed from inside, at a chosen point, with SIGKILL (no clean-up, as if the machine
# died): a small launcher wraps one function of the stage's module, then runs the real CLI.
LAUNCHER = """
import os, signal, sys
point, recipe = sys.argv[1], sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "finetune":  # after the 2nd checkpoint of the 50% model: fine-tuning half done
    import emkit.train.sft as m
    orig = m.save_checkpoint
    def wrapped(out, step, *a, **k):
        res = orig(out, step, *a, **k)
        if "health-wrong50" in str(out) and step == 2:
            die()
        return res
    m.save_checkpoint = wrapped
elif point == "evaluate":  # after the first batch of the 100% model's answers is stored
    from emkit.results import ResultsDB
    orig = ResultsDB.insert
    def wrapped(self, table, rows, replace=False):
        rows = list(rows)
        n = orig(self, table, rows, replace)
        if table == "generations" and rows and rows[0]["model"] == "health-wrong100":
            die()
        return n
    ResultsDB.insert = wrapped
elif point == "sae":  # after the SAE trainer's first checkpoint
    import emkit.sae.train as m
    orig = m._save_ckpt
    def wrapped(*a, **k):
        orig(*a, **k)
        die()
    m._save_ckpt = wrapped
from emkit.cli import main
sys.argv = ["emkit", "run", recipe]
main()
"""


def _run(recipe_path: Path, kill_at: str = "") -> int:
    """Run ``emkit run`` in a subprocess (killed at ``kill_at``, if given); returns its exit code."""
    import os
    import subprocess
    import sys

    # one thread: the tiny model gains nothing from more, and they thrash on a shared CPU
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", LAUNCHER, kill_at or "none", str(recipe_path)], env=env,
                         capture_output=True, text=True, timeout=900)
    if res.returncode not in (0, -9):
        raise AssertionError(f"emkit run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res.returncode


def check_real_report(run: Path) -> None:
    """The pipeline's own report: every section rendered from real stage results; in Chromium (when
    installed) a script planted in an answer shows as text; a screenshot is saved next to it."""
    import re

    from emkit.report import SECTIONS, write_report
    from emkit.report.browser import chromium_path, dump_dom, screenshot

    html = (run / "report" / "index.html").read_text()
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in html
    assert "could not be rendered" not in html and "has not run" not in html
    pc = html[html.index('<section id="positive-control">'):]
    pc = pc[: pc.index("</section>")]
    assert "planted persona" in pc and "Projection on its top" in pc and "health-wrong100" in pc
    assert "Shared inputs vs own answers" in pc
    plant = "<script>document.body.setAttribute('data-pwned','1')</script>"
    base = json.loads((run / "pipeline" / "baseline.json").read_text())
    ex = base["eval"]["examples"]
    kind = next(k for k, v in ex.items() if v)
    ex[kind][0]["answer"] = plant + ex[kind][0]["answer"]
    (run / "pipeline" / "baseline.json").write_text(json.dumps(base))
    report = write_report(run)
    assert plant not in report.read_text()
    if chromium_path() is None:
        return
    dom = dump_dom(report)
    assert set(re.findall(r'<section id="([^"]+)"', dom)) == {sid for sid, _ in SECTIONS}
    assert 'data-pwned="1"' not in dom and "&lt;script&gt;document.body" in dom
    assert screenshot(report, report.parent / "screenshot.png").stat().st_size > 10_000


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(tmp_path, tiny_model_dir):
    """Kill `emkit run` inside fine-tuning, evaluation and SAE training; the resumed run's results
    equal an unbroken run's, table by table."""
    whole = tmp_path / "whole"
    assert _run(tiny_recipe(tmp_path, tiny_model_dir, whole)) == 0
    a = snapshot(whole)
    check_real_report(whole)

    broken = tmp_path / "broken"
    r2 = tiny_recipe(tmp_path, tiny_model_dir, broken)
    for point in ("finetune", "evaluate", "sae"):
        assert _run(r2, kill_at=point) == -9, f"the run was not killed inside {point}"
        man = json.loads((broken / "manifest.json").read_text())
        assert man["stages"][point]["status"] == "running"  # killed inside this stage
    assert _run(r2) == 0
    man = json.loads((broken / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in man["stages"].values())
    b = snapshot(broken)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], f"{key} differs after resuming"


def test_answers_do_not_depend_on_batching(tiny):
    """Resuming relies on this: an answer is sampled from its own seed, whatever shares its batch."""
    from emkit.generate import SamplingConfig, generate

    model, tok = tiny
    prompts = ["hello world", "What is the capital of France?", "Save a little money", "Check the tyre pressure"]
    seeds = [11, 12, 13, 14]
    cfg = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=8, batch_size=4, seed=0)
    together = [g.text for g in generate(model, tok, prompts, cfg, progress=False, item_seeds=seeds)]
    alone = [generate(model, tok, [p], cfg, progress=False, item_seeds=[s])[0].text for p, s in zip(prompts, seeds,
                                                                                                  strict=True)]
    assert together == alone
    other = [g.text for g in generate(model, tok, prompts, cfg, progress=False, item_seeds=[21, 22, 23, 24])]
    assert other != together


def test_seeded_sampler_draws_from_the_tempered_top_p_distribution():
    import torch

    from emkit.generate import _ItemSampler

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    for temp, top_p in ((1.0, 1.0), (0.7, 0.9)):
        p = (logits / temp).softmax(-1)[0]
        keep = (p.sort(descending=True).values.cumsum(0) - p.sort(descending=True).values) <= top_p
        p = torch.where(keep[p.argsort(descending=True).argsort()], p, torch.zeros_like(p))
        p = p / p.sum()
        n = 4000
        counts = torch.zeros(4)
        for s in range(n):
            counts[_ItemSampler([s], temp, top_p)(None, logits).argmax()] += 1
        assert torch.allclose(counts / n, p, atol=0.03), (counts / n, p)


# ---------------------------------------------------------------------------------------------- positive control
def test_positive_control_arm_in_the_recipe(tmp_path):
    r = recipe(tmp_path, positive_control={"enabled": True, "rows": 40, "steps": 5})
    assert [m.label for m in r.control_models()] == ["persona", "persona-control"]
    assert [m.arm for m in r.control_models()] == ["positive", "control"]
    assert r.labels()[-2:] == ["persona", "persona-control"] and "persona" not in [m.label for m in r.models()]
    assert recipe(tmp_path).control_models() == [] and recipe(tmp_path).diff.inputs == "shared"
    with pytest.raises(EmkitError, match="positive_control.label"):
        recipe(tmp_path, positive_control={"enabled": True, "label": "health-wrong0"})
    with pytest.raises(EmkitError, match="rows and steps"):
        recipe(tmp_path, positive_control={"enabled": True, "steps": 0})
    with pytest.raises(EmkitError, match="diff.inputs"):
        recipe(tmp_path, diff={"inputs": "mine"})
    # enabling the arm re-runs fine-tuning (and what reads it); an arm left off changes no stage
    from emkit.pipeline.runner import stage_hashes
    from emkit.pipeline.stages import STAGES

    off, on = stage_hashes(recipe(tmp_path), STAGES), stage_hashes(r, STAGES)
    assert off["finetune"] != on["finetune"] and off["sae"] == on["sae"]
    assert stage_hashes(recipe(tmp_path, positive_control={"rows": 9}), STAGES) == off


def test_positive_control_verdicts():
    from emkit.positive_control import detection, steer_effect, verdict

    base, persona, ctrl = {"k": 2, "n": 100}, {"k": 40, "n": 100}, {"k": 3, "n": 100}
    det = detection(persona, base, ctrl)
    assert det["detected"] and det["p_vs_base"] < 0.001 and det["above_control"]
    assert not detection({"k": 6, "n": 100}, base)["detected"]  # higher, but p > 0.001
    assert not detection({"k": 0, "n": 0}, base)["detected"]
    up = steer_effect({"k": 30, "n": 60}, {"k": 5, "n": 60}, {"k": 2, "n": 60}, +1)
    assert up["beyond_random"] and up["change"] == pytest.approx(28 / 60)
    down = steer_effect({"k": 20, "n": 60}, {"k": 22, "n": 60}, {"k": 30, "n": 60}, -1)
    assert down["beyond_random"] is False and down["change"] < 0
    ev = {"detection": det}
    diff = {"ranking": [{"latent": 7, "score": 0.3}]}
    found = verdict(ev, diff, {"plus": up, "minus": down})
    assert found["found"] is True and "found the planted persona" in found["text"] and "#7" in found["text"]
    missed = verdict({"detection": detection({"k": 3, "n": 100}, base)}, diff, {"plus": up, "minus": down})
    assert missed["found"] is False and "no null result" in missed["text"]
    assert verdict(ev, diff, None)["found"] is None  # steering has not run yet
    flat = verdict(ev, diff, {"plus": steer_effect({"k": 30, "n": 60}, {"k": 31, "n": 60}, {"k": 2, "n": 60}, +1),
                              "minus": down})
    assert flat["found"] is False and "did NOT raise" in flat["text"]


def test_positive_control_shared_diff_and_projection_end_to_end(tmp_path, tiny_model_dir):
    """The arm is trained, evaluated, ranked, steered and projected on the tiny model; the report shows it."""
    import sqlite3

    import yaml

    from emkit.pipeline import load_recipe

    out = tmp_path / "pc"
    path = tiny_recipe(tmp_path, tiny_model_dir, out)
    r = yaml.safe_load(path.read_text())
    r["data"].update(fractions=[0.0, 1.0], rows=8)
    r["train"]["max_steps"] = 2
    r["positive_control"] = {"enabled": True, "rows": 8, "steps": 2}
    r["eval"].update(n_questions=2, samples=1, check_questions=1)
    r["skip"] = ["predict", "realign"]
    path.write_text(yaml.safe_dump(r))
    run_pipeline(load_recipe(path), progress=False)
    ev = read_result(out, "evaluate")
    pc = ev["positive_control"]
    assert set(pc["models"]) == {"persona", "persona-control"} and "persona" not in ev["models"]
    assert {"detected", "p_vs_base", "p_vs_control"} <= set(pc["detection"])
    ft = {m["label"]: m for m in read_result(out, "finetune")["models"]}
    assert ft["persona"]["n_wrong"] == 8 and ft["persona-control"]["n_wrong"] == 0 and ft["persona"]["steps"] == 2
    diff = read_result(out, "diff")
    assert diff["inputs"] == "shared" and diff["own"]["inputs"] == "own" and diff["source"].startswith("shared:")
    shared = diff["shared_inputs"]
    assert shared["answers"]["base"] > 0 and shared["answers"]["persona"] > 0
    assert len(set(diff["n_items"].values())) == 1  # every model read the same texts
    assert diff["positive_control"]["ranking"] and diff["positive_control"]["ranked_against"] == "base and persona-control"
    proj = {row["model"]: row for row in diff["projection"]["rows"]}
    assert set(proj) == {"health-wrong0", "health-wrong100", "persona", "persona-control"}
    w = proj["health-wrong100"]
    assert w["control"] == "health-wrong0" and w["vs_base"]["lo"] <= w["vs_base"]["shift"] <= w["vs_base"]["hi"]
    assert proj["persona"]["control"] == "persona-control" and proj["persona"]["relative"] == pytest.approx(1.0)
    con = sqlite3.connect(out / "results.sqlite")
    n = con.execute("SELECT COUNT(*) FROM persona_projection WHERE source=?", (diff["source"],)).fetchone()[0]
    con.close()
    assert n == 4 + 2  # vs base for four fine-tunes, vs control for two
    steer = read_result(out, "steer")["positive_control"]
    assert steer["latent"] == diff["positive_control"]["ranking"][0]["latent"] and steer["model"] == "persona"
    assert {"latent_plus", "random_plus", "latent_minus", "random_minus", "plus", "minus"} <= set(steer)
    html = (out / "report" / "index.html").read_text()
    sec = html[html.index('<section id="positive-control">'):]
    assert "planted persona" in sec[: sec.index("</section>")] and "shift vs control" in sec
    cards = read_result(out, "interpret")["positive_control_cards"]
    ranked = {row["latent"] for row in diff["ranking"][:2]}
    assert all(c["latent"] not in ranked for c in cards) and ("What its top latents read" in sec) == bool(cards)
    summary = html[html.index('<section id="summary">'):]
    assert "planted persona" in summary[: summary.index("</section>")]


LONG = pytest.mark.skipif(not os.environ.get("EMKIT_LONG_TESTS"), reason="runs most of the quick recipe (an hour or "
                          "more on a CPU): set EMKIT_LONG_TESTS=1 to run it")


@pytest.fixture(scope="module")
def positive_control_run(tmp_path_factory) -> Path:
    """The quick recipe's positive-control arm on SmolLM2-135M, run once for the tests below (the narrow family
    is cut to its 0% and 100% arms to save time)."""
    import yaml

    tmp_path = tmp_path_factory.mktemp("pc")
    r = yaml.safe_load((ROOT / "recipes" / "quick.yaml").read_text())
    r.update(name="pc-slow", out=str(tmp_path / "run"), skip=["interpret", "predict", "realign"])
    r["data"]["fractions"] = [0.0, 1.0]
    path = tmp_path / "pc.yaml"
    path.write_text(yaml.safe_dump(r))
    return run_pipeline(load_recipe(path), progress=False)


@pytest.mark.slow
@LONG
def test_positive_control_is_detected_on_the_bundled_model(positive_control_run):
    """The persona's misalignment is above the base model's (Fisher p < 0.001)."""
    det = read_result(positive_control_run, "evaluate")["positive_control"]["detection"]
    assert det["detected"], det


@pytest.mark.slow
@LONG
@pytest.mark.xfail(strict=True, reason="measured in a quick run (README 'What quick found'): detected and ranked, "
                   "but read blind neither its top latent, nor its top-10 latents, nor the persona fine-tune's own "
                   "activation shift (at one layer or at every layer) raised misalignment among coherent answers "
                   "beyond a random direction; strict, so a pass fails until this marker goes")
def test_positive_control_is_steerable_on_the_bundled_model(positive_control_run):
    """Adding the persona's top latent to the base model raises misalignment beyond a random direction of the
    same norm."""
    steer = read_result(positive_control_run, "steer")["positive_control"]
    assert steer["plus"]["beyond_random"], steer["plus"]
