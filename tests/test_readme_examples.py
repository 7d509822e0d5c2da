"""What a newcomer copies works: the examples of README.md and docs/*.md, and every ``--help`` Example.

- Every fenced ``python`` block runs, in a fresh process in an empty folder, with
  ``$EMKIT_EXAMPLE_MODEL`` pointing the bundled model's name at the tiny random test model.
- Every ``emkit ...`` line of a ``bash`` block, and every ``emkit ...`` line of a command's
  ``--help`` (its Example), is parsed by the real command line without running the command, and the
  files and built-in data sets it names must exist (``runs/...`` are outputs of earlier commands;
  ``/path/to/...`` and a bare file name like ``judged.csv`` stand for the reader's own files).
  Listing, showing and ``--dry-run`` lines are cheap, so they run for real.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from emkit.cli import app
from emkit.data import builtin

ROOT = Path(__file__).resolve().parents[1]
TESTED = ("README.md", "docs/tutorial.md", "docs/own_model_and_judge.md")  # each must hold examples
DOCS = tuple(dict.fromkeys([*TESTED, *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
HELP_LINE = re.compile(r"^\s*(?:[A-Za-z][\w ()-]*:\s+)?(emkit\s.+?)(?:\s+\(.*\))?\s*$")  # "(then: ...)" is prose
OUTPUTS = {"out_dir", "out_file", "json_out"}  # parameters that name what a command writes
DATASETS = {"data", "questions", "correct", "incorrect", "eval_questions", "file", "files", "reference",
            "labelled", "mix"}  # parameters that take a file or a built-in data set name
SUFFIXES = {".yaml", ".yml", ".jsonl", ".json", ".csv", ".txt", ".zip", ".py", ".md", ".sqlite", ".html"}
CHEAP = (("data", "list"), ("data", "show"), ("data", "validate"), ("models", "list"))
NETWORK_NOISE = ("Name or service not known", "Unable to fetch remote file", "Could not find a config file",
                 "Temporary failure in name resolution", "couldn't connect to 'https://huggingface.co'")


# ------------------------------------------------------------------------------------------ extracting
def fenced(lang: str) -> list[tuple[str, int, str]]:
    """``(doc, line, code)`` of every fenced block in ``lang`` in the documents."""
    out = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                out.append((doc, text.count("\n", 0, m.start()) + 2, m.group(2)))
    return out


def doc_command_lines() -> list[tuple[str, str]]:
    """``(where, line)`` of every line starting with ``emkit`` in the documents' bash blocks."""
    out = []
    for doc, start, code in fenced("bash"):
        for i, line in enumerate(code.replace("\\\n", " ").splitlines()):
            if line.strip().startswith("emkit "):
                out.append((f"{doc}:{start + i}", line.strip()))
    return out


def walk(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group under ``cmd`` with its path."""
    out = [(path, cmd)]
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        out.extend(walk(sub, (*path, name)))
    return out


def help_example_lines() -> list[tuple[str, str]]:
    """``(command, line)`` of every ``emkit ...`` line in a command's help (its Example)."""
    out = []
    for path, cmd in walk(typer.main.get_command(app)):
        for line in (cmd.help or "").splitlines():
            m = HELP_LINE.match(line)
            if m and path:
                out.append((" ".join(path), m.group(1)))
    return out


# ------------------------------------------------------------------------------------------ checking
def parse(argv: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Parse ``emkit ARGV`` as the real command line does, without running any command.

    Returns the path of the command that would run and its parsed parameters.
    """
    root = typer.main.get_command(app)  # a fresh tree: replacing its callbacks leaves `app` alone
    calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for path, cmd in walk(root):
        cmd.callback = (lambda p: lambda *a, **kw: calls.append((p, kw)))(path)
    root.main(args=argv, prog_name="emkit", standalone_mode=False)
    return calls[-1]


def pieces(value: str) -> list[str]:
    """The names inside one parameter value: ``sae:runs/x:12`` -> sae, runs/x, 12; a,b -> a, b."""
    if value.startswith(("http://", "https://")):
        return []
    return [p for p in re.split(r"[=,]|:(?!//)", value) if p]


def looks_like_path(s: str) -> bool:
    first = s.split("/", 1)[0]
    return (s.startswith(("/", "./", "../", "~")) or Path(s).suffix in SUFFIXES
            or ("/" in s and first in {p.name for p in ROOT.iterdir()} | {"runs"}))


def names_in(params: dict[str, Any]) -> tuple[list[str], bool]:
    """(problems, whether the line names the reader's own files) for the parsed parameters."""
    bad, own = [], False
    for name, value in params.items():
        if name in OUTPUTS:
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is None or isinstance(v, bool | int | float):
                continue
            for p in pieces(str(v)):
                if looks_like_path(p):
                    if p.startswith("/path/to/") or "/" not in p:
                        own = True  # the reader's file (or one an earlier example wrote)
                    elif not p.startswith("runs/") and not (ROOT / p).expanduser().exists():
                        bad.append(f"--{name}: no file {p}")
                elif name in DATASETS and not re.fullmatch(r"[\d.]+", p) and not builtin.is_builtin(p):
                    bad.append(f"--{name}: {p!r} is neither a file nor a built-in data set")
    return bad, own


def check_line(line: str) -> None:
    argv = shlex.split(line, comments=True)
    assert argv[0] == "emkit", line
    try:
        path, params = parse(argv[1:])
    except Exception as e:  # a usage error: unknown option, bad value, missing argument
        pytest.fail(f"`{line}` does not parse: {type(e).__name__}: {e}")
    bad, own = names_in(params)
    assert not bad, f"`{line}`: {bad}"
    if (path in CHEAP or params.get("dry_run")) and not own:
        res = CliRunner().invoke(app, argv[1:])
        assert res.exit_code == 0, f"`{line}` failed:\n{res.output}"


# ------------------------------------------------------------------------------------------ the tests
@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name files relative to the repository root


@pytest.mark.parametrize("line", [pytest.param(line, id=where) for where, line in doc_command_lines()])
def test_doc_command_line(line):
    check_line(line)


@pytest.mark.parametrize(("command", "line"), [pytest.param(c, line, id=c) for c, line in help_example_lines()])
def test_help_example(command, line):
    assert line.split()[1:1 + len(command.split())] == command.split(), f"{command}'s example runs another command"
    check_line(line)


def test_every_command_shows_an_example():
    with_example = {c for c, _ in help_example_lines()}
    leaves = {" ".join(p) for p, c in walk(typer.main.get_command(app)) if p and not getattr(c, "commands", None)}
    assert sorted(leaves - with_example) == []


def test_the_docs_have_examples_to_test():
    lines = [w for w, _ in doc_command_lines()]
    for doc in TESTED:
        assert any(w.startswith(doc + ":") for w in lines), f"{doc} has no `emkit` lines in bash blocks"
    assert fenced("python"), "README.md has no python block"


def test_a_broken_line_is_caught():
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_line("emkit eval --modle smollm2-135m-instruct")
    with pytest.raises(AssertionError, match="no file recipes/nope.yaml"):
        check_line("emkit run recipes/nope.yaml --dry-run")
    with pytest.raises(AssertionError, match="neither a file nor a built-in"):
        check_line("emkit data show health_incorect_subtle")


@pytest.mark.parametrize(("doc", "line", "code"), [pytest.param(*b, id=f"{b[0]}:{b[1]}") for b in fenced("python")])
def test_python_block_runs(doc, line, code, tiny_model_dir, tmp_path):
    env = {**os.environ, "EMKIT_EXAMPLE_MODEL": str(tiny_model_dir), "OMP_NUM_THREADS": "1"}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)  # emkit itself must keep local runs off the network
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, f"{doc}:{line} failed:\n{res.stderr[-3000:]}"
    noise = [w for w in NETWORK_NOISE if w in res.stderr]
    assert not noise, f"{doc}:{line} printed network warnings: {noise}"

