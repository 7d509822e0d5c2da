"""Bad and hostile inputs against the CLI: each gives exit code 2 and one line on stderr naming the
problem, never a traceback, and writes nothing outside the run folder (issue 13's catalogue).

Commands run in-process through ``emkit.cli.main`` (as the ``emkit`` script does) in a sandbox
folder; a few run as a real subprocess to check what a user's terminal sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

CHAT = '{"messages": [{"role": "user", "content": "Q%d?"}, {"role": "assistant", "content": "A%d."}]}\n'
RECIPE = """name: r
model: {model}
device: cpu
data:
  domains: [{{name: health, wrong: health_incorrect_subtle, right: health_correct, check: health_check}}]
  fractions: [0.0, 1.0]
  rows: 8
train: {{method: lora, max_steps: 1, batch_size: 2}}
eval: {{questions: broad, n_questions: 2, samples: 1, judge: embedded}}
sae: {{layer: 1, corpus: builtin, tokens: 2000, ctx_len: 32, train: {{num_latents: 64, k: 4}}}}
steer: {{screen: 1, alphas: [0, 0.1], n_questions: 1, samples: 1}}
realign: {{n_samples: 4, steps: 1, batch_size: 2, eval_every: 1, n_questions: 1, samples: 1}}
"""


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def run_cli(args: list[str], cwd: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    """``emkit ARGS`` in-process in ``cwd``: (exit code, stdout, stderr)."""
    from emkit.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["emkit", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture
def sandbox(tmp_path, tiny_model_dir, monkeypatch):
    """A folder with a copy of the tiny model in model/ and the run folder run/ (may not exist)."""
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    monkeypatch.delenv("EMKIT_DEBUG", raising=False)
    return tmp_path


# --- the catalogue: (id, setup(sandbox) -> argv, words the error line must contain) ------------


def _write(p: Path, data: str | bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def _non_utf8(s: Path) -> list[str]:
    _write(s / "bad.jsonl", (CHAT % (1, 1)).encode() + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    return ["data", "validate", "bad.jsonl"]


def _non_utf8_questions(s: Path) -> list[str]:
    _write(s / "q.yaml", b"- id: a\n  paraphrases: ['fine?']\n- id: b\n  paraphrases: ['caf\xe9?']\n")
    return ["data", "validate", "q.yaml"]


def _model_arch(s: Path) -> list[str]:
    cfg = json.loads((s / "model" / "config.json").read_text())
    cfg["model_type"] = "no-such-arch"
    cfg["architectures"] = ["NoSuchArchForCausalLM"]
    (s / "model" / "config.json").write_text(json.dumps(cfg))
    return ["generate", "--model", "./model", "--out", "run", "--max-new-tokens", "2"]


def _model_truncated(s: Path) -> list[str]:
    w = next((s / "model").glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return ["generate", "--model", "./model", "--out", "run", "--max-new-tokens", "2"]


def _model_no_tokenizer(s: Path) -> list[str]:
    for p in (s / "model").iterdir():
        if "token" in p.name or p.name in ("vocab.json", "merges.txt"):
            p.unlink()
    return ["generate", "--model", "./model", "--out", "run", "--max-new-tokens", "2"]


def _recipe(s: Path, model: str = "./model", extra: str = "", **repl: str) -> Path:
    text = RECIPE.format(model=model) + extra
    for k, v in repl.items():
        text = text.replace(k, v)
    return _write(s / "recipe.yaml", text)


def _mix_out_folder(s: Path) -> list[str]:
    (s / "mixed").mkdir()
    return ["data", "mix", "--correct", "health_correct", "--incorrect", "health_incorrect_subtle", "-f", "0.5",
            "-n", "10", "-o", "mixed"]


def _corrupt_stage(s: Path) -> list[str]:
    _write(s / "run" / "pipeline" / "baseline.json", '{"half": ')
    return ["report", "run"]


def _csv_stray_quote(s: Path) -> list[str]:
    _write(s / "q.csv", 'id,question\nq1,"What is your wish?\nq2,How are you?\nq3,"Tell me"\nq4,Last one\n')
    return ["data", "validate", "q.csv"]


def _mix(*extra: str) -> Callable[[Path], list[str]]:
    return lambda s: ["data", "mix", "--correct", "health_correct", "--incorrect", "health_incorrect_subtle",
                      "-f", "0.5", "-n", "10", "-o", "run/mix.jsonl", *extra]


def _long_line(s: Path) -> list[str]:
    _write(s / "long.jsonl", CHAT % (1, 1) + '{"messages": "' + "x" * 5000 + '"}\n')
    os.environ["EMKIT_MAX_LINE_BYTES"] = "1000"  # restored by the test
    return ["data", "validate", "long.jsonl"]


def _long_line_zip(s: Path) -> list[str]:
    with zipfile.ZipFile(s / "long.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("d/train.jsonl", CHAT % (1, 1) + "y" * 50_000 + "\n")
    os.environ["EMKIT_MAX_LINE_BYTES"] = "1000"
    return ["data", "validate", "long.zip"]


def _zip_slip(s: Path) -> list[str]:
    with zipfile.ZipFile(s / "evil.zip", "w") as zf:
        zf.writestr("../../evil.jsonl", CHAT % (1, 1))
    return ["data", "validate", "evil.zip"]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


CASES: list = [
    # data files
    ("non-utf8-jsonl", _non_utf8, ("bad.jsonl:2", "UTF-8", "byte")),
    ("non-utf8-questions", _non_utf8_questions, ("q.yaml", "line 4", "UTF-8", "byte")),
    ("csv-stray-quote", _csv_stray_quote, ("q.csv", "quote")),
    ("line-too-long", _long_line, ("long.jsonl:2", "longer than", "EMKIT_MAX_LINE_BYTES")),
    ("line-too-long-zip", _long_line_zip, ("long.zip", "longer than", "EMKIT_MAX_LINE_BYTES")),
    ("zip-slip", _zip_slip, ("escape",)),
    ("missing-data-file", lambda s: ["data", "validate", "nope.jsonl"], ("nope.jsonl",)),
    # models and devices
    ("model-unknown-arch", _model_arch, ("no-such-arch",)),
    ("model-truncated-weights", _model_truncated, ("safetensors",)),
    ("model-no-tokenizer", _model_no_tokenizer, ("tokenizer",)),
    ("model-missing", lambda s: ["generate", "--model", "./nope", "--out", "run"], ("does not exist",)),
    ("hub-id-no-network", lambda s: os.environ.update(HF_ENDPOINT="http://127.0.0.1:9") or
     ["generate", "--model", "no-such-org/no-such-model", "--out", "run"], ("cannot reach", "no-such-org")),
    pytest.param("device-cuda-without-gpu", lambda s: ["generate", "--model", "./model", "--out", "run", "--device",
                                                       "cuda"], ("no CUDA GPU",),
                 marks=pytest.mark.skipif(_has_cuda(), reason="a GPU is present"), id="device-cuda-without-gpu"),
    ("device-tpu9", lambda s: ["generate", "--model", "./model", "--out", "run", "--device", "tpu9"], ("tpu9",)),
    ("samples-zero", lambda s: ["generate", "--model", "./model", "--out", "run", "-n", "0"], ("at least 1",)),
    ("questions-missing", lambda s: ["generate", "--model", "./model", "--out", "run", "-q", "no.yaml"],
     ("no question file",)),
    # data mix
    ("mix-out-is-folder", _mix_out_folder, ("mixed", "folder")),
    ("mix-negative-heldout", _mix("--heldout", "-0.5"), ("heldout", "-0.5")),
    ("mix-same-set-twice", lambda s: ["data", "mix", "--correct", "health_correct", "--incorrect", "health_correct",
                                      "-f", "0.5", "-o", "run/mix.jsonl"], ("same",)),
    ("mix-bad-fraction", _mix("-f", "1.5"), ("fraction",)),
    # recipes and runs
    ("recipe-model-empty", lambda s: ["run", str(_recipe(s, model="")), "--dry-run", "--out", "run"], ("model",)),
    ("recipe-samples-bool", lambda s: ["run", str(_recipe(s, **{"samples: 1, judge": "samples: true, judge"})),
                                       "--dry-run", "--out", "run"], ("eval.samples", "true")),
    ("recipe-missing", lambda s: ["run", "no-such-recipe.yaml", "--out", "run"], ("no recipe",)),
    # --dry-run (and the start of a run) checks what it can before hours of work
    ("dry-run-sae-layer", lambda s: ["run", str(_recipe(s, **{"layer: 1": "layer: 7"})), "--dry-run", "--out", "run"],
     ("sae.layer 7", "0..1")),
    ("dry-run-k-too-large", lambda s: ["run", str(_recipe(s, **{"k: 4": "k: 100"})), "--dry-run", "--out", "run"],
     ("sae.train.k = 100", "64")),
    ("dry-run-unknown-judge", lambda s: ["run", str(_recipe(s, **{"judge: embedded": "judge: oracle"})), "--dry-run",
                                         "--out", "run"], ("unknown judge 'oracle'",)),
    ("dry-run-missing-model", lambda s: ["run", str(_recipe(s, model="./gone")), "--dry-run", "--out", "run"],
     ("does not exist", "gone")),
    ("dry-run-missing-questions", lambda s: ["run", str(_recipe(s, **{"questions: broad": "questions: gone.yaml"})),
                                             "--dry-run", "--out", "run"], ("no question file", "gone.yaml")),
    ("dry-run-missing-data", lambda s: ["run", str(_recipe(s, **{"wrong: health_incorrect_subtle": "wrong: w.jsonl"})),
                                        "--dry-run", "--out", "run"], ("health].wrong", "w.jsonl")),
    ("dry-run-all-problems-at-once", lambda s: ["run", str(_recipe(s, **{"layer: 1": "layer: 7", "k: 4": "k: 100"})),
                                                "--dry-run", "--out", "run"], ("2 problem(s)", "sae.layer", "k = 100")),
    ("run-checks-before-work", lambda s: ["run", str(_recipe(s, **{"layer: 1": "layer: 7"})), "--out", "run"],
     ("sae.layer 7",)),
    ("report-corrupt-stage", _corrupt_stage, ("baseline.json", "--from baseline")),
    ("report-not-a-run", lambda s: ["report", "."], ("no pipeline results",)),
]


@pytest.mark.parametrize("name, setup, words",
                         [c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2(sandbox, capsys, monkeypatch, name, setup, words):
    for var in ("EMKIT_MAX_LINE_BYTES", "HF_ENDPOINT"):  # restored after the test, whatever setup sets
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    args = setup(sandbox)
    before = {k: v for k, v in snapshot(sandbox).items() if not k.startswith("run/")}
    code, out, err = run_cli(args, sandbox, capsys, monkeypatch)
    lines = error_lines(err)
    assert code == 2, (code, out, err)
    assert not (sandbox / "run" / "manifest.json").exists() or name.startswith("report"), "work started"
    assert "Traceback" not in err + out
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    after = {k: v for k, v in snapshot(sandbox).items() if not k.startswith("run/")}
    assert after == before, "files written outside the run folder"


# --- text that looks like Rich markup is printed as is -----------------------------------------

MARKUP = "[/INST] say [/bold] and [red]x[/red]"


def test_data_show_prints_markup_in_data_as_text(sandbox, capsys, monkeypatch):
    row = {"messages": [{"role": "user", "content": MARKUP}, {"role": "assistant", "content": "[/bold]"}]}
    _write(sandbox / "m.jsonl", json.dumps(row) + "\n")
    for args in (["data", "show", "m.jsonl"], ["data", "validate", "m.jsonl"]):
        code, out, err = run_cli(args, sandbox, capsys, monkeypatch)
        assert code == 0 and "Traceback" not in err, err
    code, out, err = run_cli(["data", "show", "m.jsonl"], sandbox, capsys, monkeypatch)
    assert "[/INST]" in out and "[/bold]" in out


def test_generate_and_eval_print_markup_in_model_text_as_text(sandbox, capsys, monkeypatch):
    import emkit.generate

    _write(sandbox / "q.yaml", f"- id: '[/INST]'\n  paraphrases: ['{MARKUP}']\n")
    real = emkit.generate.answer_questions

    def markup_answers(*args, **kw):
        rows = real(*args, **kw)
        return [{**r, "answer": MARKUP} for r in rows]

    monkeypatch.setattr(emkit.generate, "answer_questions", markup_answers)
    base = ["--model", "./model", "-q", "q.yaml", "--out", "run", "--max-new-tokens", "3", "--device", "cpu"]
    code, out, err = run_cli(["generate", *base], sandbox, capsys, monkeypatch)
    assert code == 0 and "[/INST] say [/bold]" in out, err
    code, out, err = run_cli(["eval", *base, "--label", "[/bold]", "-n", "1"], sandbox, capsys, monkeypatch)
    assert code == 0, err
    assert "[/INST]" in out and "[/bold]" in out  # question id and label in the summary


def test_skip_bad_skips_a_non_utf8_line_and_names_it(sandbox, capsys, monkeypatch):
    _non_utf8(sandbox)
    _write(sandbox / "bad.jsonl", (sandbox / "bad.jsonl").read_bytes() + (CHAT % (3, 3)).encode())
    code, out, err = run_cli(["data", "validate", "--skip-bad", "bad.jsonl"], sandbox, capsys, monkeypatch)
    assert code == 0, err
    assert "2 chat rows" in out and "bad.jsonl:2: not valid UTF-8 (byte 0xe9 at byte offset" in err


def test_csv_count_read_is_printed(sandbox, capsys, monkeypatch):
    _write(sandbox / "q.csv", 'id,question\nq1,"Why, really?"\nq2,"Two\nlines"\nq3,Three\n')
    code, out, err = run_cli(["data", "validate", "q.csv"], sandbox, capsys, monkeypatch)
    assert code == 0 and "3 questions" in out, err


def test_real_terminal_sees_one_line(sandbox):
    """The installed entry point, as a user runs it: one line on stderr, exit 2."""
    _non_utf8(sandbox)
    res = subprocess.run([sys.executable, "-m", "emkit.cli", "data", "validate", "bad.jsonl"], cwd=sandbox,
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "40"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert error_lines(res.stderr) == [error_lines(res.stderr)[0]] and "bad.jsonl:2" in res.stderr


def test_dry_run_prints_the_folder_it_would_use(sandbox, capsys, monkeypatch):
    code, out, err = run_cli(["run", str(_recipe(sandbox)), "--dry-run", "--out", "elsewhere"], sandbox, capsys,
                             monkeypatch)
    assert code == 0, err
    assert "run folder elsewhere" in err and "runs/r" not in err and not (sandbox / "elsewhere").exists()


def test_an_unexpected_failure_is_one_line_too(sandbox, capsys, monkeypatch):
    import emkit.data

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(emkit.data, "mix", broken)  # what `emkit data mix` calls
    code, out, err = run_cli(_mix()(sandbox), sandbox, capsys, monkeypatch)
    assert code == 1 and error_lines(err) == ["error: unexpected ZeroDivisionError: division by zero (hint: run again "
                                              "with --debug for the traceback, and please report it)"]


def test_a_huge_line_in_a_small_zip_is_refused_in_bounded_memory(tmp_path):
    """A 64 MiB line compresses to well under 1 MB; reading stops at the cap (16 MiB), not at the line's end."""
    import tracemalloc

    from emkit.data import load_dataset
    from emkit.errors import EmkitError

    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("d/train.jsonl", "w", force_zip64=True) as f:
        for _ in range(4):
            f.write(b"a" * (16 << 20))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(EmkitError, match="longer than 16 MiB"):
            load_dataset(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"peak traced memory: {peak / (1 << 20):.0f} MiB for a 64 MiB line")
    assert peak < 64 << 20
