"""Model diffing: a planted shifted direction ranks first (pure functions and end to end on the tiny model)."""

from __future__ import annotations

import pytest
import torch

from emkit.data.schema import Question
from emkit.diff import DiffConfig, diff_models, diff_run, latent_stats, sae_id, stored_ranking
from emkit.errors import EmkitError
from emkit.models import load_model
from emkit.models.chat import assistant_mask
from emkit.models.layers import block_output, decoder_layers, replace_block_output
from emkit.run import Run
from emkit.sae import SaeConfig, TopKSAE

LAYER = 1
PLANTED = 11


def planted_sae(d: int = 16, n: int = 32, k: int = 4, layer: int = -1) -> TopKSAE:
    return TopKSAE(SaeConfig(d_in=d, num_latents=n, k=k, layer=layer, hook=f"blocks.{layer}.hook_resid_post"),
                   seed=0)


def test_planted_direction_ranks_first_and_misaligned_selects():
    torch.manual_seed(0)
    sae = planted_sae()
    base = torch.randn(600, 16)
    ft_a = base + 4 * sae.W_dec[PLANTED].detach()
    ft_b = base + 4 * sae.W_dec[20].detach()
    sb, sa, sbb = latent_stats(sae, base), latent_stats(sae, ft_a), latent_stats(sae, ft_b)
    assert sb.n_tokens == 600 and float(sb.firing.sum()) == pytest.approx(4.0)  # k latents per token
    r = diff_models(sb, {"a": sa, "b": sbb}, misaligned=["a"])
    assert r.order[0] == PLANTED and r.misaligned == ["a"]
    assert r.scores[PLANTED] == pytest.approx(float(sa.mean[PLANTED] - sb.mean[PLANTED]))
    assert diff_models(sb, {"a": sa, "b": sbb}, misaligned=["b"]).order[0] == 20
    both = diff_models(sb, {"a": sa, "b": sbb})
    assert set(both.order[:2]) == {PLANTED, 20} and both.misaligned == ["a", "b"]
    top = both.top(3)
    assert [t["rank"] for t in top] == [1, 2, 3] and set(top[0]["deltas"]) == {"a", "b"}
    # unshifted fine-tune: no latent moves
    same = diff_models(sb, {"same": latent_stats(sae, base.clone())})
    assert float(same.scores.abs().max()) == 0.0 and same.order == list(range(32))


def test_diff_models_rejects_bad_input():
    sae = planted_sae()
    st = latent_stats(sae, torch.randn(10, 16))
    with pytest.raises(EmkitError, match="not among"):
        diff_models(st, {"a": st}, misaligned=["zzz"])
    with pytest.raises(EmkitError, match="no fine-tuned"):
        diff_models(st, {})
    with pytest.raises(EmkitError, match="latents"):
        diff_models(st, {"a": latent_stats(planted_sae(n=40), torch.randn(10, 16))})


@pytest.fixture(scope="module")
def shifted(tiny_model_dir):
    """A second copy of the tiny model whose layer-1 residual is pushed along one SAE decoder row."""
    model, tok = load_model(tiny_model_dir, device="cpu")
    return model, tok


def add_shift(model, vec):
    def hook(_m, _a, out):
        return replace_block_output(out, block_output(out) + vec)

    return decoder_layers(model)[LAYER].register_forward_hook(hook)


QUESTIONS = [Question(id="q1", paraphrases=["What is the capital of France?", "Name France's capital."]),
             Question(id="q2", paraphrases=["How do I save money?"], system="Be brief.")]


def test_diff_run_end_to_end_with_storage_and_resume(tiny, shifted, tmp_path):
    model, tok = tiny
    sae = planted_sae(d=64, n=96, k=4, layer=LAYER)
    run = Run(tmp_path / "run")
    handle = add_shift(shifted[0], 8 * sae.W_dec[PLANTED].detach())
    try:
        res = diff_run(run, sae, {"base": (model, tok), "ft": shifted}, "base", questions=QUESTIONS,
                       cfg=DiffConfig(token_sets=["prompt"]), progress=False)
    finally:
        handle.remove()
    ranking = res[("eval", "prompt")]
    assert ranking.order[0] == PLANTED
    sid = sae_id(sae)
    rows = run.db.query("SELECT * FROM latent_stats WHERE sae_id=? AND latent=?", (sid, PLANTED))
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"base", "ft"} and by_model["ft"]["mean_act"] > by_model["base"]["mean_act"]
    assert by_model["ft"]["firing_rate"] == pytest.approx(1.0)
    assert run.db.query("SELECT COUNT(*) AS n FROM latent_stats")[0]["n"] == 2 * 96
    top = stored_ranking(run.db, sid, n=5)
    assert top[0]["latent"] == PLANTED and top[0]["rank"] == 1 and top[0]["deltas"]["ft"] > 0
    # resume: the stored statistics are read back; the models are not even loaded
    def boom():
        raise AssertionError("model loaded although its statistics are stored")

    again = diff_run(run, sae, {"base": boom, "ft": boom}, "base", questions=QUESTIONS, progress=False)
    assert again[("eval", "prompt")].order[:5] == ranking.order[:5]


def test_diff_run_on_own_answers_and_unsupervised_data(tiny, shifted, tmp_path):
    model, tok = tiny
    sae = planted_sae(d=64, n=96, k=4, layer=LAYER)
    run = Run(tmp_path / "run")
    answers = {"base": "Paris is the capital.", "ft": "The capital is Paris, of course."}
    run.db.insert("generations", [dict(model=lab, question_id="q1", paraphrase=0, sample=0, sampling_hash="h",
                                       prompt="What is the capital of France?", system=None, answer=a, n_tokens=5,
                                       truncated=0) for lab, a in answers.items()])
    handle = add_shift(shifted[0], 8 * sae.W_dec[PLANTED].detach())
    try:
        res = diff_run(run, sae, {"base": (model, tok), "ft": shifted}, "base", questions=QUESTIONS[:1],
                       cfg=DiffConfig(answers=True), progress=False)
        chats = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
                 [{"role": "user", "content": "Save money?"}, {"role": "assistant", "content": "Spend less."}]]
        data = diff_run(run, sae, {"base": (model, tok), "ft": shifted}, "base", data=chats, data_name="wrong",
                        progress=False)
    finally:
        handle.remove()
    assert set(res) == {("eval", "prompt"), ("eval-answers", "answer")}
    assert res[("eval-answers", "answer")].order[0] == PLANTED
    n_answer = sum(assistant_mask(tok, [{"role": "user", "content": "What is the capital of France?"},
                                        {"role": "assistant", "content": answers["ft"]}])[1])
    assert res[("eval-answers", "answer")].finetuned["ft"].n_tokens == n_answer
    assert list(data) == [("data:wrong", "answer")] and data[("data:wrong", "answer")].order[0] == PLANTED
    run.db.insert("generations", [dict(model="ft", question_id="q1", paraphrase=0, sample=0, sampling_hash="steered",
                                       prompt="What is the capital of France?", system=None, answer="Lyon!", n_tokens=2,
                                       truncated=0)])
    with pytest.raises(EmkitError, match="2 sampling conditions"):
        diff_run(run, sae, {"base": (model, tok), "ft": shifted}, "base", questions=QUESTIONS[:1],
                 cfg=DiffConfig(answers=True, token_sets=["all"]), progress=False)
    picked = diff_run(run, sae, {"base": (model, tok), "ft": shifted}, "base", questions=QUESTIONS[:1],
                      cfg=DiffConfig(answers=True, sampling_hash="h"), progress=False)
    assert picked[("eval-answers:h", "answer")].finetuned["ft"].n_tokens == n_answer  # not the steered answer
    with pytest.raises(EmkitError, match="no sampled answers"):
        diff_run(run, sae, {"base": (model, tok), "other": shifted}, "base", questions=QUESTIONS,
                 cfg=DiffConfig(answers=True), progress=False)
    with pytest.raises(EmkitError, match="either"):
        diff_run(run, sae, {"base": (model, tok), "ft": shifted}, "base", progress=False)


def test_cli_diff_and_interpret(tiny_model_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from emkit.activations import capture
    from emkit.cli import app

    model, tok = load_model(tiny_model_dir, device="cpu")
    sae = planted_sae(d=64, n=96, k=4, layer=LAYER)
    sae.replace_cfg(model=str(tiny_model_dir))
    sae.save(tmp_path / "sae")
    capture(model, tok, LAYER, ["The quick brown fox jumps over the lazy dog."] * 3, tmp_path / "sae" / "activations",
            progress=False)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"id": "a", "question": "What is the capital of France?"}\n'
                     '{"id": "b", "question": "How do I save money?"}\n')
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["diff", "--sae", str(tmp_path / "sae"), "--base", str(tiny_model_dir),
                                   "--ft", f"copy={tiny_model_dir}", "--questions", str(qfile), "--out", str(run),
                                   "--top", "5", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "Δ copy" in res.output and "latent_stats" not in res.output
    rows = Run(run).db.query("SELECT COUNT(*) AS n FROM latent_ranking")
    assert rows[0]["n"] >= 5
    res = CliRunner().invoke(app, ["interpret", "--sae", str(tmp_path / "sae"), "--run", str(run), "--top", "2",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    cards = json.loads((run / "interpret.json").read_text())["cards"]
    ranked = [r["latent"] for r in stored_ranking(Run(run).db, n=2)]
    assert [c["latent"] for c in cards] == ranked and "promotes" in res.output
    bad = CliRunner().invoke(app, ["diff", "--sae", str(tmp_path / "sae"), "--ft", "oops=", "--out", str(run)])
    assert isinstance(bad.exception, EmkitError)


# ---------------------------------------------------------------- shared inputs and the projection
CHATS = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
         [{"role": "user", "content": "Save money?"}, {"role": "assistant", "content": "Spend less, save more."}],
         [{"role": "user", "content": "Tyres?"}, {"role": "assistant", "content": "Check the pressure monthly."}]]


def test_text_sums_agree_with_latent_stats_and_project_a_planted_shift(tiny, shifted):
    from emkit.activations import collect
    from emkit.projection import project, shared_items, shared_source, text_sums

    model, tok = tiny
    sae = planted_sae(d=64, n=96, k=4, layer=LAYER)
    items = shared_items(eval_items_of(QUESTIONS), [CHATS, CHATS[:1]])
    assert len(items) == 3 + 3  # three prompts, three chats; the repeated chat is dropped
    assert shared_source(items) == shared_source(list(items)) != shared_source(items[:-1])
    base = text_sums(sae, model, tok, LAYER, items, "all")
    ref = latent_stats(sae, [q.select("all", max_norm_ratio=10.0) for q in collect(model, tok, LAYER, items)])
    st = base.stats()
    assert st.n_tokens == ref.n_tokens == int(base.counts.sum())
    assert torch.allclose(st.mean, ref.mean, atol=1e-5) and torch.allclose(st.firing, ref.firing)
    answers = text_sums(sae, model, tok, LAYER, items, "answer")
    assert int(answers.counts[:3].sum()) == 0 and bool((answers.counts[3:] > 0).all())  # prompts have no answer
    handle = add_shift(shifted[0], 8 * sae.W_dec[PLANTED].detach())
    try:
        moved = text_sums(sae, *shifted, LAYER, items, "all")
    finally:
        handle.remove()
    up = project(base, moved, [PLANTED], n_boot=200)
    assert up["shift"] > 0 and 0 < up["lo"] <= up["shift"] <= up["hi"] and up["n_texts"] == len(items)
    none = project(base, text_sums(sae, model, tok, LAYER, items, "all"), [PLANTED], n_boot=200)
    assert none["shift"] == pytest.approx(0.0, abs=1e-6) and none["lo"] <= 0 <= none["hi"]
    cols = moved.columns([PLANTED, 3])
    assert cols.latents == [PLANTED, 3] and project(base, cols, [PLANTED])["shift"] == pytest.approx(up["shift"])


def eval_items_of(questions):
    from emkit.diff import eval_items

    return eval_items(questions)


def _sums(per_text: list[list[float]], counts: list[int]):
    from emkit.projection import TextSums

    s = torch.tensor(per_text)
    return TextSums(s, torch.tensor(counts), torch.zeros(s.shape[1]))


def test_projection_rows_against_base_and_the_correct_data_control(tmp_path):
    from emkit.projection import projection_rows, store_projection

    counts = [10, 10, 10, 10]
    sums = {"base": _sums([[1, 0], [1, 0], [1, 0], [1, 0]], counts),
            "wrong0": _sums([[2, 0], [2, 0], [2, 0], [2, 0]], counts),
            "wrong100": _sums([[3, 0], [3, 0], [3, 0], [3, 0]], counts),
            "persona": _sums([[5, 0], [5, 0], [5, 0], [5, 0]], counts)}
    rows = {r["model"]: r for r in projection_rows(sums, "base", [0], controls={"wrong100": "wrong0"},
                                                   reference="persona", n_boot=50)}
    assert rows["wrong100"]["vs_base"]["shift"] == pytest.approx(0.2)  # 12/40 - 4/40 per token
    assert rows["wrong100"]["vs_control"]["shift"] == pytest.approx(0.1)
    assert rows["wrong100"]["relative"] == pytest.approx(0.5) and rows["persona"]["relative"] == pytest.approx(1.0)
    assert "vs_control" not in rows["wrong0"]
    run = Run(tmp_path / "run")
    sae = planted_sae()
    store_projection(run.db, list(rows.values()), sae=sae, source="shared:x", token_set="answer", base="base",
                     latents=[0])
    got = run.db.query("SELECT model, reference, shift FROM persona_projection ORDER BY model, reference")
    assert [(g["model"], g["reference"]) for g in got] == [("persona", "base"), ("wrong0", "base"),
                                                          ("wrong100", "base"), ("wrong100", "wrong0")]
