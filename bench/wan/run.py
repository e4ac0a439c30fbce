"""Time to deliver a ~150 MB CT study (300 instances) over a shaped WAN link.

RelayPACS (agent in the edge namespace -> hub in the central one, manifest + tus segments) beside
plain STOW-RS with dicomweb-client (batches of 10, a failed batch retried) to Orthanc over the
same link. Each time is reported as a ratio to the link's lower bound: raw bytes x 8 / rate.

    uv run python bench/wan/run.py [--instances 300] [--scenarios clean,loss5,outage,loss30]

Needs root (network namespaces), nftables, Orthanc. Prints a table, writes bench/wan/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.helpers import archive_files, copy_tree  # noqa: E402
from tests.support.processes import AgentProcess, HubProcess, folder_destinations  # noqa: E402

from relaypacs_dev.generate import generate_study  # noqa: E402
from relaypacs_dev.wan import LinkProfile, WanLink, wan_available  # noqa: E402

RATE = 20.0
SCENARIOS = {
    "clean": LinkProfile(rate_mbit=RATE),
    "loss5": LinkProfile(rate_mbit=RATE, loss_pct=5),
    "outage": LinkProfile(rate_mbit=RATE, loss_pct=1, outage_every_s=30, outage_for_s=8),
    "loss30": LinkProfile(rate_mbit=RATE, loss_pct=30, loss_direction="up"),
}
TIMEOUT = 1800.0


def relaypacs(link: WanLink, source: Path, n: int, work: Path) -> dict[str, float]:
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "archive"
    hub = HubProcess(
        work,
        host=link.hub_ip,
        prefix=link.wrap("hub", []),
        probe_prefix=link.wrap("edge", []),
        destinations_file=str(folder_destinations(work / "d.toml", archive)),
        log_level="warning",
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
            if time.monotonic() - started > TIMEOUT:
                return {"seconds": float("nan"), "complete": 0.0}
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


def stow(link: WanLink, source: Path, n: int, work: Path) -> dict[str, float]:
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
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return {"seconds": float("nan"), "complete": 0.0}
        result = json.loads(out.stdout.strip().splitlines()[-1])
        count = subprocess.run(
            link.wrap("edge", ["curl", "-fs", "-m", "30", f"{base}/statistics"]),
            capture_output=True,
            text=True,
        )
        held = json.loads(count.stdout or "{}").get("CountInstances", 0)
        return {"seconds": result["seconds"], "complete": float(held == n), "held": held}
    finally:
        orthanc.terminate()
        orthanc.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", default=str(REPO / "bench/wan/results.json"))
    args = parser.parse_args()
    if (reason := wan_available()) is not None:
        sys.exit(f"cannot run: {reason}")
    root = Path(tempfile.mkdtemp(prefix="relaypacs-bench-wan-"))
    source = root / "study"
    study = generate_study(source, instances=args.instances, seed=2026, rows=512, columns=512)
    raw = study.total_bytes
    rows = []
    for name in args.scenarios.split(","):
        profile = SCENARIOS[name]
        bound = raw * 8 / (RATE * 1e6)
        print(f"[{name}] {profile.describe()}: lower bound {bound:.0f}s", flush=True)
        with WanLink(profile) as link:
            rp = relaypacs(link, source, args.instances, root / f"{name}-rp")
        with WanLink(profile) as link:
            st = stow(link, source, args.instances, root / f"{name}-stow")
        rows.append(
            {
                "scenario": name,
                "link": profile.describe(),
                "raw_mb": raw / 1e6,
                "lower_bound_s": bound,
                "relaypacs_s": rp["seconds"],
                "relaypacs_ratio": rp["seconds"] / bound,
                "relaypacs_wire_mb": rp.get("wire_mb", float("nan")),
                "relaypacs_complete": bool(rp["complete"]),
                "stow_s": st["seconds"],
                "stow_ratio": st["seconds"] / bound,
                "stow_complete": bool(st["complete"]),
                "stow_held": st.get("held"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"300-instance CT, {raw / 1e6:.0f} MB raw, link {RATE:g} Mbit/s; times from inbox to hub")
    print(
        f"{'scenario':<8} {'link':<44} {'bound s':>8} {'RelayPACS s':>12} {'ratio':>6} "
        f"{'wire MB':>8} {'STOW-RS s':>10} {'ratio':>6} {'STOW ok':>8}"
    )
    for r in rows:
        print(
            f"{r['scenario']:<8} {r['link']:<44} {r['lower_bound_s']:>8.0f} "
            f"{r['relaypacs_s']:>12.0f} "
            f"{r['relaypacs_ratio']:>6.2f} {r['relaypacs_wire_mb']:>8.0f} {r['stow_s']:>10.0f} "
            f"{r['stow_ratio']:>6.2f} {r['stow_complete']!s:>8}"
        )
    Path(args.out).write_text(json.dumps({"rate_mbit": RATE, "rows": rows}, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
