"""Run folder: manifest, config, stage skipping/resume, transactional results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest

from emkit.config import config_hash, from_dict
from emkit.errors import EmkitError
from emkit.results import ResultsDB
from emkit.run import Run


@dataclass
class Cfg:
    lr: float = 1e-4
    name: str = "x"


def test_config_hash_stable_and_sensitive():
    assert config_hash(Cfg()) == config_hash({"name": "x", "lr": 1e-4})
    assert config_hash(Cfg(lr=2e-4)) != config_hash(Cfg())


def test_from_dict_validates():
    assert from_dict(Cfg, {"lr": 1}).lr == 1.0
    with pytest.raises(EmkitError, match="unknown key"):
        from_dict(Cfg, {"lrr": 1})
    with pytest.raises(EmkitError, match="expected float"):
        from_dict(Cfg, {"lr": "fast"})


def test_manifest_and_stage_skip(tmp_path):
    run = Run(tmp_path / "r")
    run.save_config(Cfg())
    calls = []
    assert run.stage("s", Cfg(), lambda: calls.append(1) or 5) == 5
    assert run.stage("s", Cfg(), lambda: calls.append(1) or 5) is None  # skipped: same config
    run.stage("s", Cfg(lr=1.0), lambda: calls.append(1))  # config changed: runs again
    assert len(calls) == 2
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["s"]["status"] == "done" and "torch" in m["versions"]
    assert (tmp_path / "r" / "experiment.yaml").read_text().startswith("lr:")


def test_failed_stage_recorded_and_rerun(tmp_path):
    run = Run(tmp_path / "r")

    def boom():
        raise RuntimeError("nope")

    with pytest.raises(RuntimeError):
        run.stage("s", Cfg(), boom)
    assert Run(tmp_path / "r").stage_status("s")["status"] == "failed"
    assert run.stage("s", Cfg(), lambda: 1) == 1


def test_run_path_is_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(EmkitError, match="not a folder"):
        Run(tmp_path / "f")


def test_kill_mid_write_keeps_committed_rows(tmp_path):
    """A process killed while inserting keeps every batch it committed; the DB stays readable."""
    db_path = tmp_path / "results.sqlite"
    script = textwrap.dedent(f"""
        import time
        from emkit.results import ResultsDB
        db = ResultsDB({str(db_path)!r})
        for b in range(10_000):
            db.insert("generations", [dict(model="m", question_id=f"q{{b}}", paraphrase=0, sample=s,
                      sampling_hash="h", prompt="p", system=None, answer="a" * 100, n_tokens=1, truncated=0)
                      for s in range(50)])
            print(b, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = -1
    t0 = time.time()
    while committed < 20 and time.time() - t0 < 60:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    db = ResultsDB(db_path)
    n = db.query("SELECT COUNT(*) AS n FROM generations")[0]["n"]
    assert n >= (committed + 1) * 50 and n % 50 == 0  # whole batches only
    assert db.query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"


def _holder_process(folder) -> subprocess.Popen:
    """Another process that opens the run folder and keeps it (stops by itself after 60 s)."""
    script = f"import time; from emkit.run import Run; r = Run({str(folder)!r}); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_second_process_on_a_run_folder_is_refused_naming_the_holder(tmp_path):
    proc = _holder_process(tmp_path / "r")
    try:
        with pytest.raises(EmkitError, match=rf"in use by process {proc.pid} ") as e:
            Run(tmp_path / "r")
        assert "--wait" in e.value.hint
        run = Run(tmp_path / "other")  # another folder is free
        assert Run(tmp_path / "other").path == run.path  # the same process may open its folder again
    finally:
        proc.kill()
        proc.wait()
    assert Run(tmp_path / "r").path.is_dir()  # killed with -9: the system freed the lock


def test_wait_starts_when_the_holder_ends(tmp_path):
    import threading

    proc = _holder_process(tmp_path / "r")
    threading.Timer(1.0, proc.kill).start()
    t0 = time.time()
    run = Run(tmp_path / "r", wait=True)
    proc.wait()
    assert run.path.is_dir() and 0.9 < time.time() - t0 < 30


def test_two_emkit_runs_on_one_folder(tmp_path):
    """`emkit run` as a second process on a folder in use: one line naming the holder, exit 2."""
    proc = _holder_process(tmp_path / "r")
    try:
        res = subprocess.run([sys.executable, "-m", "emkit.cli", "run", "smoke", "--out", str(tmp_path / "r")],
                             capture_output=True, text=True)
    finally:
        proc.kill()
        proc.wait()
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(err) == 1 and f"process {proc.pid}" in err[0]


def test_workers_of_a_distributed_launch_share_the_lock(tmp_path, monkeypatch):
    proc = _holder_process(tmp_path / "r")  # plays rank 0
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        assert Run(tmp_path / "r").path.is_dir()
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(EmkitError, match="in use"):
            Run(tmp_path / "r")
    finally:
        proc.kill()
        proc.wait()
