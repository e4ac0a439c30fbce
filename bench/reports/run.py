"""Report loop benchmark: time from a final SR stored in the PACS to the report readable at the
facility's agent (its LAN API, what the PWA reads; the PWA is told over its live stream within a
quarter of a second of the agent having it).

    uv run python bench/reports/run.py                 # 6 reports per row
    uv run python bench/reports/run.py --reports 12

Each row runs a fresh ``relaypacs-hub serve`` process delivering to one real Orthanc 1.10 and an
enrolled ``relaypacs-agent run`` process following the hub's report feed. Studies are sent through
the agent's watched folder and delivered; then a final SR for each is stored into Orthanc by
STOW-RS at a random moment within a window, as a reporting system would, and the agent's API is
read every 0.1 s until it shows the report.

- ``RelayPACS, default QIDO-RS poll``: the hub's defaults (routine studies asked every 20 s in
  their first hour), Orthanc's change feed off: any PACS with DICOMweb.
- ``RelayPACS, Orthanc /changes feed``: the defaults with the change feed on (profile orthanc).
- ``RelayPACS, Orthanc webhook``: the change feed off; Orthanc runs the project's Python-plugin
  script (``deploy/orthanc/relaypacs_report_hook.py``, Debian's ``orthanc-python``) and tells the
  hub of each new report (``report_webhook_token``).
- ``plain periodic QIDO-RS poll``: the alternative a site would script: one fixed poll interval
  (``--plain-interval``, 60 s) with no change feed.

Prints a table (median, p95, max in seconds) and writes bench/reports/results.json. Not a test:
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.orthanc import PYTHON_PLUGIN, OrthancServer, free_port  # noqa: E402
from tests.support.processes import AgentProcess, HubProcess, wait_for  # noqa: E402
from tests.support.reports import stow  # noqa: E402

from relaypacs_dev.generate import generate_study  # noqa: E402
from relaypacs_dev.reports import text_sr  # noqa: E402

ADMIN_TOKEN = "admin-" + "b" * 40
WEBHOOK_TOKEN = "webhook-" + "b" * 40
HOOK = ROOT / "deploy/orthanc/relaypacs_report_hook.py"
PASSWORD = "bench-Reports-passw0rd"


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run_row(
    orthanc: OrthancServer,
    workdir: Path,
    hub_settings: dict[str, str],
    reports: int,
    window: float,
    seed: int,
    hub_port: int,
) -> list[float]:
    destinations = workdir / "destinations.toml"
    destinations.write_text(
        f'[[destinations]]\nname = "pacs"\ntype = "dicomweb"\nprofile = "orthanc"\n'
        f'url = "{orthanc.dicomweb_url}"\n'
    )
    hub = HubProcess(
        workdir,
        port=hub_port,
        admin_token=ADMIN_TOKEN,
        destinations_file=str(destinations),
        allow_agent_token="false",
        **hub_settings,
    )
    hub.start()
    agent: AgentProcess | None = None
    try:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=hub.url, headers=admin) as c:
            r = c.post(
                "/api/v1/users",
                json={"username": "nurse", "password": PASSWORD, "role": "clinician",
                      "facilities": ["north"]},
            )  # fmt: skip
            r.raise_for_status()
            code = c.post("/api/v1/devices/enrollment-codes", json={"facility": "north"}).json()
        env = {**os.environ, "RELAYPACS_AGENT_DATA_DIR": str(workdir / "agent")}
        subprocess.run(
            [sys.executable, "-m", "relaypacs_agent.cli", "enroll", "--hub-url", hub.url,
             "--code", code["code"], "--name", "bench"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        web_port = free_port()
        agent = AgentProcess(
            workdir, hub.url, web_port=str(web_port), web_host="127.0.0.1", quiet_period_seconds="1"
        )
        agent.start()
        web = f"http://127.0.0.1:{web_port}"

        def login() -> dict[str, str] | None:
            try:
                r = httpx.post(
                    web + "/api/v1/auth/login", json={"username": "nurse", "password": PASSWORD}
                )
            except httpx.HTTPError:
                return None
            return (
                {"Authorization": f"Bearer {r.json()['token']}"} if r.status_code == 200 else None
            )

        session = wait_for(login, 60, "a LAN login at the agent")
        studies = []
        for i in range(reports):
            study = generate_study(
                workdir / f"s{i}", instances=2, rows=32, columns=32, seed=seed * 100 + i
            )
            for f in study.files:
                (agent.inbox / f"{i}-{f.name}").write_bytes(f.read_bytes())
            studies.append(study.study_instance_uid)

        def delivered(uid: str) -> bool:
            r = httpx.get(f"{hub.url}/api/v1/studies/{uid}", headers=admin)
            jobs = r.json().get("destinations", []) if r.status_code == 200 else []
            return bool(jobs) and all(j["state"] == "done" for j in jobs)

        for uid in studies:
            wait_for(lambda uid=uid: delivered(uid), 120, "delivery")
        rng = random.Random(seed)
        offsets = sorted(rng.uniform(0, window) for _ in studies)
        stored: dict[str, float] = {}
        seen: dict[str, float] = {}
        start = time.monotonic()

        def store_all() -> None:
            for uid, offset in zip(studies, offsets, strict=True):
                time.sleep(max(0.0, start + offset - time.monotonic()))
                stow(orthanc.dicomweb_url, text_sr(uid, findings="Normal study."))
                stored[uid] = time.monotonic()

        storer = threading.Thread(target=store_all)
        storer.start()
        with httpx.Client(base_url=web, headers=session) as c:
            deadline = start + window + 600
            while len(seen) < len(studies) and time.monotonic() < deadline:
                for uid in studies:
                    if uid in stored and uid not in seen:
                        r = c.get(f"/api/v1/studies/{uid}/report")
                        if r.status_code == 200 and r.json()["status"] == "final":
                            seen[uid] = time.monotonic()
                time.sleep(0.1)
        storer.join()
        missing = [u for u in studies if u not in seen]
        if missing:
            raise AssertionError(f"{len(missing)} report(s) never reached the agent")
        return [seen[u] - stored[u] for u in studies]
    finally:
        if agent is not None:
            agent.terminate()
        hub.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=6, help="reports per row")
    parser.add_argument("--window", type=float, default=30.0, help="seconds to spread them over")
    parser.add_argument("--plain-interval", type=float, default=60.0)
    args = parser.parse_args()
    rows = [
        (
            "RelayPACS, default QIDO-RS poll",
            {"report_orthanc_changes": "false"},
        ),
        ("RelayPACS, Orthanc /changes feed", {"report_orthanc_changes": "true"}),
        (
            "RelayPACS, Orthanc webhook",
            {"report_orthanc_changes": "false", "report_webhook_token": WEBHOOK_TOKEN},
        ),
        (
            f"plain periodic QIDO-RS poll ({args.plain_interval:.0f} s)",
            {
                "report_orthanc_changes": "false",
                "report_poll_seconds": str(args.plain_interval),
                "report_poll_stat_seconds": str(args.plain_interval),
            },
        ),
    ]
    results: list[dict[str, Any]] = []
    if not PYTHON_PLUGIN.exists():
        sys.exit("needs Orthanc's Python plugin for the webhook row: make system-deps")
    # Every row's hub listens on this port; the hook calls it (rows without the webhook token
    # answer 401 and keep to their own way of finding reports).
    hub_port = free_port()
    token_file = Path(tempfile.mkdtemp(prefix="bench-reports-hook-")) / "token"
    token_file.write_text(WEBHOOK_TOKEN)
    hook = {"RelayPACS": {"HubUrl": f"http://127.0.0.1:{hub_port}", "TokenFile": str(token_file)}}
    with OrthancServer(python_script=HOOK, extra_config=hook) as orthanc:
        for n, (name, settings) in enumerate(rows):
            with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
                t0 = time.monotonic()
                latencies = run_row(
                    orthanc, Path(tmp), settings, args.reports, args.window, n + 1, hub_port
                )
                results.append(
                    {
                        "row": name,
                        "reports": len(latencies),
                        "median_s": round(statistics.median(latencies), 2),
                        "p95_s": round(_p95(latencies), 2),
                        "max_s": round(max(latencies), 2),
                        "row_wall_s": round(time.monotonic() - t0, 1),
                    }
                )
            print(f"done: {name}", file=sys.stderr)
    title = "from final SR in the PACS to the agent"
    header = f"{title:<42} {'n':>3} {'median':>8} {'p95':>8} {'max':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['row']:<42} {r['reports']:>3} {r['median_s']:>7.1f}s {r['p95_s']:>7.1f}s"
            f" {r['max_s']:>7.1f}s"
        )
    out = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "window_s": args.window,
        "rows": results,
    }
    (Path(__file__).parent / "results.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
