"""Open a report in headless Chromium (no network, throwaway profile): dump its DOM or screenshot it.

Used by the report tests and by ``emkit report RUN --screenshot``. Chromium is the Debian package
``chromium`` (``apt-get install -y chromium``); without it these functions raise a clear error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from emkit.errors import EmkitError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-default-apps", "--hide-scrollbars", "--mute-audio",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]


def chromium_path() -> str | None:
    """The Chromium executable (``$EMKIT_CHROMIUM`` or on PATH), or None."""
    env = os.environ.get("EMKIT_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = chromium_path()
    if exe is None:
        raise EmkitError("Chromium is not installed", hint="apt-get install -y chromium (or set EMKIT_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="emkit-chromium-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise EmkitError(f"Chromium did not finish within {timeout:.0f}s") from None


def dump_dom(html: str | Path, timeout: float = 60) -> str:
    """The page's DOM after loading, serialised by Chromium."""
    res = _run(["--dump-dom", Path(html).resolve().as_uri()], timeout)
    if res.returncode != 0 or "<html" not in res.stdout:
        raise EmkitError(f"Chromium could not load {html}: {res.stderr.strip()[-300:]}")
    return res.stdout


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int = 2400, timeout: float = 60) -> Path:
    """Save a PNG of the top ``height`` pixels of the page."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    res = _run([f"--screenshot={png}", f"--window-size={width},{height}", Path(html).resolve().as_uri()], timeout)
    if not png.is_file() or png.stat().st_size == 0:
        raise EmkitError(f"Chromium wrote no screenshot of {html}: {res.stderr.strip()[-300:]}")
    return png
