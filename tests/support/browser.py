"""Debian's Chromium, driven by Playwright (browser downloads fail here), and the PWA build the
browser tests load."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PWA_DIST = ROOT / "pwa" / "dist"
CHROMIUM = "/usr/bin/chromium"


def ensure_pwa_built() -> None:
    """Build the PWA if `make pwa` has not (a test run on its own)."""
    if (PWA_DIST / "index.html").is_file() and (PWA_DIST / "dashboard.html").is_file():
        return
    subprocess.run(["bash", str(ROOT / "scripts" / "build-pwa.sh")], check=True)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()
