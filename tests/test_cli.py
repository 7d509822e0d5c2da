"""CLI: help texts, one-line errors, and nothing damaged in the run folder on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from emkit.cli import app

runner = CliRunner()


def _commands(group, prefix=()):
    import typer.main

    cmd = typer.main.get_command(group)
    out = []

    def walk(c, path):
        sub = getattr(c, "commands", None)
        if sub:
            for name, child in sub.items():
                walk(child, (*path, name))
        else:
            out.append(path)

    walk(cmd, prefix)
    return out


def test_every_command_has_help_with_example():
    for path in _commands(app):
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, path
        assert "Example" in res.output, f"`emkit {' '.join(path)} --help` shows no example"


def _emkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "emkit.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/model"], "does not exist"),
        (["--questions", "missing.yaml"], "no question file"),
        (["--samples", "0"], "at least 1"),
    ],
)
def test_generate_bad_input_one_line(tmp_path, tiny_model_dir, args, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    base = ["generate", "--model", str(tiny_model_dir), "--questions", "broad", "--out", str(run_dir)]
    res = _emkit(*base, *args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert (run_dir / "keep.txt").read_text() == "precious"


def test_bad_question_files(tmp_path, tiny_model_dir):
    bad_yaml = tmp_path / "q.yaml"
    bad_yaml.write_text("- id: a\n  paraphrases: [unclosed\n")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    bad_json = tmp_path / "b.jsonl"
    bad_json.write_text('{"id": "a", "question": "hi"}\n{"id": oops}\n')
    for f, msg in [(bad_yaml, "not valid YAML"), (empty, "empty"), (bad_json, ":2: invalid JSON")]:
        res = _emkit("generate", "--model", str(tiny_model_dir), "--questions", str(f), "--out", str(tmp_path / "r"))
        assert res.returncode == 2 and msg in res.stderr, res.stderr


def test_debug_shows_traceback(tmp_path):
    res = _emkit("--debug", "generate", "--model", "/no/such/model", "--out", str(tmp_path / "r"))
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_generate_writes_run(tmp_path, tiny_model_dir):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "a", "question": "hi"}) + "\n" + json.dumps({"id": "b", "question": "hello"}) + "\n")
    res = _emkit("generate", "--model", str(tiny_model_dir), "--questions", str(q), "--samples", "2",
                 "--max-new-tokens", "4", "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    assert "4 answers" in res.stdout
    assert (tmp_path / "r" / "results.sqlite").exists() and (tmp_path / "r" / "manifest.json").exists()
