"""Open a report in headless Chromium: a screenshot, and the DOM after the page has loaded.

Used by `whetstone report --screenshot` and by the report's browser test. Chromium
runs with no network-facing features (no sync, no component updates, no QUIC) and a
throwaway profile, so it reads the file and nothing else.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from whetstone.errors import WhetstoneError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(html: Path, action: list[str], width: int, height: int, timeout: float) -> subprocess.CompletedProcess:
    browser = find_chromium()
    if browser is None:
        raise WhetstoneError("no Chromium found; install it (Debian: `apt-get install chromium`) to take screenshots.")
    with tempfile.TemporaryDirectory(prefix="whetstone-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={width},{height}", *action, html.resolve().as_uri()]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WhetstoneError(f"Chromium did not finish rendering {html} within {timeout:.0f} s.") from None
    if result.returncode != 0:
        raise WhetstoneError(f"Chromium failed on {html} (exit {result.returncode}): {result.stderr.strip()[-400:]}")
    return result


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 2400, timeout: float = 90) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(Path(html), [f"--screenshot={png.resolve()}"], width, height, timeout)
    if not png.is_file():
        raise WhetstoneError(f"Chromium ran but wrote no screenshot to {png}.")
    return png


def dump_dom(html: Path, timeout: float = 90) -> str:
    """The serialized DOM after load (scripts, if any, have run)."""
    return _run(Path(html), ["--dump-dom"], 1280, 2400, timeout).stdout
