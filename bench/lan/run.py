"""LAN upload benchmark: how fast a study goes from a phone/PC on the LAN into the agent.

    uv run python bench/lan/run.py              # 200 x 512 KB CT instances (about 105 MB)
    uv run python bench/lan/run.py --quick      # 60 instances

A real hub (embedded defaults) and a real agent with its LAN web app run as processes on this
machine. Two paths upload the same study into the agent, each into a fresh agent:

- ``tus client``: Python (httpx) speaking tus 1.0 to the agent as the PWA does: one batch, one
  upload per file, 1 MiB PATCHes, 2 files in flight;
- ``PWA in Chromium``: the real upload app in headless Chromium (Debian's, via Playwright):
  files picked, headers read in the browser, Send, tus-js-client uploads from IndexedDB.

Timed from the first request (the Send click) until the agent has taken in every file (its
catalogue says ``done`` for each upload: validated, hashed, fsynced, spooled). Loopback, so this
is the agent's and the browser's cost, not the Wi-Fi's. Prints a table and writes
bench/lan/results.json. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench" / "lan"
sys.path.insert(0, str(ROOT))

from tests.support.browser import chromium, ensure_pwa_built  # noqa: E402
from tests.support.orthanc import free_port  # noqa: E402
from tests.support.processes import (  # noqa: E402
    AgentProcess,
    HubProcess,
    folder_destinations,
    wait_for,
)

PASSWORD = "bench-lan-password-1"
CHUNK = 1024 * 1024


def dataset(n: int) -> list[Path]:
    from relaypacs_dev.generate import generate_study

    out = WORK / f"ct-{n}"
    files = sorted(out.rglob("*.dcm"))
    if len(files) != n:
        shutil.rmtree(out, ignore_errors=True)
        generate_study(out, instances=n, series=max(1, n // 100), seed=4242)
        files = sorted(out.rglob("*.dcm"))
    return files


class Stack:
    def __init__(self, workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        archive = workdir / "archive"
        archive.mkdir()
        dest = folder_destinations(workdir / "destinations.toml", archive)
        env = {
            **os.environ,
            "RELAYPACS_HUB_DATA_DIR": str(workdir / "hub"),
            "RELAYPACS_HUB_BOOTSTRAP_PASSWORD": PASSWORD,
        }
        subprocess.run(
            [sys.executable, "-m", "relaypacs_hub.cli", "create-admin", "--username", "bench"],
            env=env,
            check=True,
            capture_output=True,
        )
        self.hub = HubProcess(workdir, destinations_file=str(dest))
        self.hub.start()
        port = free_port()
        # A long quiet period: only the upload into the agent is measured.
        self.agent = AgentProcess(
            workdir,
            self.hub.url,
            web_port=str(port),
            web_host="127.0.0.1",
            quiet_period_seconds="3600",
        )
        self.agent.start()
        self.url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _reachable(self.url), 60, "the agent's web app to reach the hub")

    def done(self) -> int:
        db = self.agent.data_dir / "agent.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(
                conn.execute("SELECT COUNT(*) FROM web_uploads WHERE state = 'done'").fetchone()[0]
            )

    def close(self) -> None:
        self.agent.terminate()
        self.hub.terminate()


def _reachable(url: str) -> bool:
    try:
        return bool(httpx.get(url + "/api/v1/info", timeout=2).json()["hub"]["reachable"])
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def _login(url: str) -> dict[str, str]:
    r = httpx.post(url + "/api/v1/auth/login", json={"username": "bench", "password": PASSWORD})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _meta(**kv: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in kv.items())


def run_tus_client(stack: Stack, files: list[Path]) -> float:
    auth = _login(stack.url)
    started = time.perf_counter()
    with httpx.Client(base_url=stack.url, headers=auth, timeout=60) as c:
        batch = c.post(
            "/api/v1/batches", json={"service_level": "routine", "expected_files": len(files)}
        ).json()

        def one(path: Path) -> None:
            data = path.read_bytes()
            r = c.post(
                "/api/v1/uploads",
                headers={
                    "Tus-Resumable": "1.0.0",
                    "Upload-Length": str(len(data)),
                    "Upload-Metadata": _meta(filename=path.name, batch=batch["id"]),
                },
            )
            r.raise_for_status()
            url, offset = r.headers["location"], 0
            while offset < len(data):
                r = c.patch(
                    url,
                    content=data[offset : offset + CHUNK],
                    headers={
                        "Tus-Resumable": "1.0.0",
                        "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
                r.raise_for_status()
                offset = int(r.headers["upload-offset"])

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(one, files))
    wait_for(lambda: stack.done() == len(files), 600, "every upload taken in", interval=0.05)
    return time.perf_counter() - started


def run_browser(stack: Stack, files: list[Path]) -> float:
    ensure_pwa_built()
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
        page.goto(stack.url + "/")
        page.get_by_label("Username").fill("bench")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_test_id("new-upload").click()
        page.get_by_test_id("pick-files").set_input_files([str(f) for f in files])
        page.get_by_test_id("review-study").first.wait_for(timeout=120_000)
        started = time.perf_counter()
        page.get_by_role("button", name="Send").click()
        wait_for(lambda: stack.done() == len(files), 900, "every upload taken in", interval=0.05)
        elapsed = time.perf_counter() - started
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    files = dataset(60 if args.quick else 200)
    total = sum(f.stat().st_size for f in files)
    rows: list[dict[str, Any]] = []
    for name, fn in (
        ("tus client (httpx, 2 in flight)", run_tus_client),
        ("PWA in Chromium (tus-js-client)", run_browser),
    ):
        stack = Stack(WORK / "run")
        try:
            seconds = fn(stack, files)
        finally:
            stack.close()
        rows.append(
            {
                "path": name,
                "files": len(files),
                "bytes": total,
                "seconds": seconds,
                "files_per_s": len(files) / seconds,
                "mb_per_s": total / seconds / 1e6,
            }
        )
    print(
        f"\nLAN upload into the agent: {len(files)} CT instances, {total / 1e6:.0f} MB, "
        f"{platform.node()} ({os.cpu_count()} cores)\n"
    )
    print("| path | seconds | files/s | MB/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['path']} | {r['seconds']:.1f} | {r['files_per_s']:.0f} | {r['mb_per_s']:.0f} |"
        )
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps({"rows": rows, "machine": platform.platform()}, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
