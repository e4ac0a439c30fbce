"""Time to deliver a CT study over a shaped WAN link, loss in both directions as the normal case.

RelayPACS (agent in the edge namespace -> hub in the central one, manifest + tus segments) beside
plain STOW-RS with dicomweb-client (batches of 10, a failed batch retried) to Orthanc over the
same link. Each time is reported as a ratio to the link's lower bound: raw bytes x 8 / rate.

    uv run python bench/wan/run.py [--scenarios clean,loss5,outage,loss30up,loss30,loss50]
                                   [--only relaypacs|stow] [--instances N] [--keep]

Needs root (network namespaces), nftables, Orthanc. Prints a table, writes bench/wan/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.helpers import archive_files, copy_tree  # noqa: E402
from tests.support.processes import AgentProcess, HubProcess, folder_destinations  # noqa: E402

from relaypacs_dev.generate import generate_study  # noqa: E402
from relaypacs_dev.wan import LinkProfile, WanLink, wan_available  # noqa: E402

RATE = 20.0
# name: (link, instances of the CT study, time limit in seconds). Loss "both" drops packets
# arriving at either end (data and ACKs, requests and answers): the realistic case.
SCENARIOS: dict[str, tuple[LinkProfile, int, float]] = {
    "clean": (LinkProfile(rate_mbit=RATE), 300, 1800.0),
    "loss5": (LinkProfile(rate_mbit=RATE, loss_pct=5), 300, 1800.0),
    "outage": (
        LinkProfile(rate_mbit=RATE, loss_pct=1, outage_every_s=30, outage_for_s=8),
        300,
        1800.0,
    ),
    "loss30up": (LinkProfile(rate_mbit=RATE, loss_pct=30, loss_direction="up"), 300, 1800.0),
    "loss30": (LinkProfile(rate_mbit=RATE, loss_pct=30), 40, 900.0),
    "loss50": (LinkProfile(rate_mbit=RATE, loss_pct=50), 10, 600.0),
}
TIMEOUT = 1800.0


def relaypacs(
    link: WanLink, source: Path, n: int, work: Path, timeout: float = TIMEOUT
) -> dict[str, float]:
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "archive"
    hub = HubProcess(
        work,
        host=link.hub_ip,
        prefix=link.wrap("hub", []),
        probe_prefix=link.wrap("edge", []),
        destinations_file=str(folder_destinations(work / "d.toml", archive)),
        log_level="info",
    )
    hub.start(timeout=120)
    agent = AgentProcess(
        work,
        hub.url,
        prefix=link.wrap("edge", []),
        quiet_period_seconds="1",
        settle_seconds="0.2",
        retry_max_seconds="2",
        allow_insecure_http="true",  # plain HTTP over the emulated private WAN link
    )
    agent.start()
    try:
        started = time.monotonic()
        copy_tree(source, agent.inbox)
        while len(archive_files(archive)) < n:
            if time.monotonic() - started > timeout:
                held = len(archive_files(archive))
                return {"seconds": float("nan"), "complete": 0.0, "held": held}
            time.sleep(0.5)
        seconds = time.monotonic() - started
        wire = agent.status()
    finally:
        agent.terminate()
        hub.terminate()
    db = work / "agent" / "agent.db"
    import sqlite3

    conn = sqlite3.connect(db)
    wire_bytes = conn.execute("SELECT COALESCE(SUM(wire_bytes), 0) FROM transfer_stats").fetchone()[
        0
    ]
    conn.close()
    del wire
    return {"seconds": seconds, "complete": 1.0, "wire_mb": wire_bytes / 1e6}


def stow(
    link: WanLink, source: Path, n: int, work: Path, timeout: float = TIMEOUT
) -> dict[str, float]:
    storage = work / "orthanc"
    storage.mkdir(parents=True)
    cfg = storage / "orthanc.json"
    cfg.write_text(
        json.dumps(
            {
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "HttpPort": 8042,
                "DicomPort": 4242,
                "RemoteAccessAllowed": True,
                "AuthenticationEnabled": False,
                "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            }
        )
    )
    log = (work / "orthanc.log").open("wb")
    orthanc = subprocess.Popen(link.wrap("hub", ["Orthanc", str(cfg)]), stdout=log, stderr=log)
    try:
        base = f"http://{link.hub_ip}:8042"
        for _ in range(120):
            probe = link.wrap("edge", ["curl", "-fs", "-m", "2", f"{base}/system"])
            if subprocess.run(probe, capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        cmd = link.wrap(
            "edge",
            [
                sys.executable,
                str(REPO / "bench/wan/stow_baseline.py"),
                f"{base}/dicom-web",
                str(source),
            ],
        )
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"seconds": float("nan"), "complete": 0.0, "held": _held(link, base)}
        result = json.loads(out.stdout.strip().splitlines()[-1])
        held = _held(link, base)
        return {"seconds": result["seconds"], "complete": float(held == n), "held": held}
    finally:
        orthanc.terminate()
        orthanc.wait(timeout=30)
        log.close()


def _held(link: WanLink, base: str) -> int:
    """Instances Orthanc holds, asked over the (lossy) link with a few tries."""
    for _ in range(5):
        count = subprocess.run(
            link.wrap("edge", ["curl", "-fs", "-m", "30", f"{base}/statistics"]),
            capture_output=True,
            text=True,
        )
        if count.returncode == 0:
            return int(json.loads(count.stdout).get("CountInstances", 0))
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=0, help="override every scenario's")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--only", choices=["both", "relaypacs", "stow"], default="both")
    parser.add_argument("--out", default=str(REPO / "bench/wan/results.json"))
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (agent and hub logs)"
    )
    args = parser.parse_args()
    if (reason := wan_available()) is not None:
        sys.exit(f"cannot run: {reason}")
    root = Path(tempfile.mkdtemp(prefix="relaypacs-bench-wan-"))
    load_before = os.getloadavg()
    studies: dict[int, tuple[Path, int]] = {}
    rows = []
    nan = {"seconds": float("nan"), "complete": 0.0}
    for name in args.scenarios.split(","):
        profile, n, limit = SCENARIOS[name]
        n = args.instances or n
        if n not in studies:
            src = root / f"study-{n}"
            studies[n] = (src, generate_study(src, instances=n, seed=2026).total_bytes)
        source, raw = studies[n]
        bound = raw * 8 / (RATE * 1e6)
        print(f"[{name}] {profile.describe()}: {n} instances, lower bound {bound:.1f}s", flush=True)
        rp = st = nan
        if args.only in ("both", "relaypacs"):
            with WanLink(profile) as link:
                rp = relaypacs(link, source, n, root / f"{name}-rp", limit)
        if args.only in ("both", "stow"):
            with WanLink(profile) as link:
                st = stow(link, source, n, root / f"{name}-stow", limit)
        rows.append(
            {
                "scenario": name,
                "link": profile.describe(),
                "instances": n,
                "raw_mb": raw / 1e6,
                "limit_s": limit,
                "lower_bound_s": bound,
                "relaypacs_s": rp["seconds"],
                "relaypacs_ratio": rp["seconds"] / bound,
                "relaypacs_wire_mb": rp.get("wire_mb", float("nan")),
                "relaypacs_complete": bool(rp["complete"]),
                "relaypacs_held": rp.get("held", n if rp["complete"] else None),
                "stow_s": st["seconds"],
                "stow_ratio": st["seconds"] / bound,
                "stow_complete": bool(st["complete"]),
                "stow_held": st.get("held"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    load_after = os.getloadavg()
    print()
    print(f"CT studies of 512x512 instances over {RATE:g} Mbit/s; time from inbox to archive")
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}")
    print(
        f"{'scenario':<9} {'link':<30} {'inst':>4} {'MB':>6} {'bound s':>7} {'RelayPACS s':>11} "
        f"{'ratio':>6} {'STOW-RS s':>9} {'ratio':>6}"
    )

    def cell(seconds: float, held: Any, n: int, width: int) -> str:
        if seconds == seconds:  # not NaN: complete
            return f"{seconds:>{width}.1f}"
        if held is None:  # not run (--only)
            return f"{'-':>{width}}"
        return f"{f'{held}/{n} held':>{width}}"

    for r in rows:
        print(
            f"{r['scenario']:<9} {r['link']:<30} {r['instances']:>4} {r['raw_mb']:>6.1f} "
            f"{r['lower_bound_s']:>7.1f} "
            f"{cell(r['relaypacs_s'], r['relaypacs_held'], r['instances'], 11)} "
            f"{r['relaypacs_ratio']:>6.2f} "
            f"{cell(r['stow_s'], r['stow_held'], r['instances'], 9)} {r['stow_ratio']:>6.2f}"
        )
    Path(args.out).write_text(
        json.dumps(
            {"rate_mbit": RATE, "load_before": load_before, "load_after": load_after, "rows": rows},
            indent=2,
        )
    )
    if args.keep:
        print(f"work directory kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
