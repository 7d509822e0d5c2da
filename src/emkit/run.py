"""The run folder: resolved config, manifest (versions, seeds, stage status) and results database.

```
runs/<name>/
  experiment.yaml   the resolved config
  manifest.json     versions, seeds, config hashes, stage status and timings
  results.sqlite    generations, judgments, metrics, latent statistics
```

A stage is run through :meth:`Run.stage`: it is skipped when it finished before with the same
config hash, so an interrupted run resumes and a finished one costs nothing to re-run.

One process writes to a run folder at a time: opening a :class:`Run` takes an exclusive lock on
``RUN/.emkit.lock`` (``flock``; the system frees it when the process ends, even on ``kill -9``).
A second process gets a one-line error naming the holder, or waits its turn with ``wait=True``.
The workers of one distributed launch (``RANK`` > 0) share their rank 0's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml

from emkit.config import config_hash, to_dict
from emkit.errors import EmkitError
from emkit.results import ResultsDB

T = TypeVar("T")
LOCK_NAME = ".emkit.lock"
PACKAGES = ("emkit", "torch", "transformers", "peft", "trl", "accelerate", "safetensors", "numpy")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path, prefix: str) -> Iterator[Path]:
    """A temp folder beside ``path`` to fill; it replaces ``path`` whole when the block ends without
    error, and is removed when it raises, so readers never see half a folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for p in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[p] = metadata.version(p)
    return out


_held: dict[str, list[int]] = {}  # resolved run folder -> [lock file descriptor, Run objects using it]


def _holder(folder: Path) -> str:
    """Who holds a run folder's lock, from what it wrote into the lock file."""
    try:
        info = json.loads((folder / LOCK_NAME).read_text(encoding="utf-8"))
        return f"process {info['pid']} on {info.get('host', '?')} ({info.get('cmd', '?')}, since {info.get('since', '?')})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def lock_run(folder: Path, *, wait: bool = False, poll: float = 1.0) -> str:
    """Take (or share, within this process) the exclusive lock of a run folder; returns its key.

    Held until every :class:`Run` of this process on the folder is gone, or the process ends.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return ""
    if int(os.environ.get("WORLD_SIZE") or 1) > 1 and (os.environ.get("RANK") or "0") != "0":
        return ""  # a worker of a distributed launch (torchrun, accelerate): rank 0 holds the lock for the job
    key = str(folder.resolve())
    if key in _held:
        _held[key][1] += 1
        return key
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _holder(folder)
            if not wait:
                os.close(fd)
                raise EmkitError(f"run folder {folder} is in use by {holder}",
                                 hint="wait for it to end, or pass --wait to start when it does") from None
            if not told:
                print(f"waiting for run folder {folder}, in use by {holder}", file=sys.stderr, flush=True)
                told = True
            time.sleep(poll)
        except BaseException:
            os.close(fd)
            raise
    info = {"pid": os.getpid(), "host": platform.node(), "cmd": " ".join(["emkit", *sys.argv[1:]])[:200],
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    _held[key] = [fd, 1]
    return key


def _unlock(key: str) -> None:
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[key]
        os.close(entry[0])  # closing the descriptor frees the flock


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's ``manifest.json`` ({} when absent); a corrupt one is a one-line error naming it."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        raise EmkitError(f"{path} is corrupt ({e.msg} at line {e.lineno})",
                         hint="move it away to start afresh; finished stages then run again") from None
    if not isinstance(data, dict):
        raise EmkitError(f"{path} is corrupt (not a JSON object)", hint="move it away to start afresh")
    return data


class Run:
    """A run folder. Creating one on an existing folder reopens it (resume); ``wait``: queue behind
    another process that has it open instead of failing."""

    def __init__(self, path: str | Path, create: bool = True, *, wait: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise EmkitError(f"no run folder at {self.path}")
            self.path.mkdir(parents=True)
        elif not self.path.is_dir():
            raise EmkitError(f"{self.path} exists and is not a folder")
        key = lock_run(self.path, wait=wait)  # before anything is read or written
        if key:
            weakref.finalize(self, _unlock, key)
        self.manifest_path = self.path / "manifest.json"
        self.manifest: dict[str, Any] = self._read_manifest()
        self.manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.manifest["versions"] = package_versions()
        self.manifest.setdefault("stages", {})
        self.manifest.setdefault("seeds", {})
        self._db: ResultsDB | None = None
        self.save_manifest()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def db(self) -> ResultsDB:
        if self._db is None:
            self._db = ResultsDB(self.path / "results.sqlite")
        return self._db

    def subdir(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def _read_manifest(self) -> dict[str, Any]:
        return read_manifest(self.manifest_path)

    def save_manifest(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2, sort_keys=True))

    def save_config(self, cfg: Any) -> None:
        """Write the resolved config to ``experiment.yaml``."""
        atomic_write_text(self.path / "experiment.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def record_seed(self, name: str, seed: int) -> None:
        self.manifest["seeds"][name] = seed
        self.save_manifest()

    def stage_status(self, name: str) -> dict[str, Any] | None:
        return self.manifest["stages"].get(name)

    def is_done(self, name: str, cfg: Any) -> bool:
        st = self.stage_status(name)
        return bool(st and st.get("status") == "done" and st.get("config_hash") == config_hash(cfg))

    def stage(self, name: str, cfg: Any, fn: Callable[[], T], *, force: bool = False) -> T | None:
        """Run ``fn`` as stage ``name`` unless it is done with the same config; record status and time."""
        h = config_hash(cfg)
        if not force and self.is_done(name, cfg):
            return None
        self.manifest["stages"][name] = {"status": "running", "config_hash": h, "started": time.time()}
        self.save_manifest()
        t0 = time.time()
        try:
            result = fn()
        except BaseException as e:
            self.manifest["stages"][name].update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
            self.save_manifest()
            raise
        self.manifest["stages"][name].update(status="done", seconds=round(time.time() - t0, 2), finished=time.time())
        self.save_manifest()
        return result
