"""Ingest benchmark: folder and C-STORE ingest throughput, and peak memory for a 2 GB study.

    uv run python bench/ingest/run.py                 # 600 x 512 KB instances, 2 GB RSS study
    uv run python bench/ingest/run.py --quick         # 200 instances, 0.5 GB RSS study

Folder ingest is the agent's whole pipeline per file (header parse, hash, spool, fsync, SQLite
record, original let go), in move mode (hard link into the spool) and copy mode (hashed copy).
C-STORE ingest is dcmtk's storescu sending to the agent's SCP on loopback in one association,
timed from the first byte to storescu's exit (every instance durable before its response). Peak
RSS is measured in a fresh child process per run (VmHWM), for a 2 GB study and a quarter of it:
memory must not grow with the study. Prints a table and writes bench/ingest/results.json.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench" / "ingest"
sys.path.insert(0, str(ROOT))


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def dataset(n: int, name: str, seed: int) -> Path:
    """``n`` CT instances of 512x512 (about 512 KB each), generated once and kept."""
    from relaypacs_dev.generate import generate_study

    out = WORK / f"{name}-{n}"
    if len(list(out.rglob("*.dcm"))) != n:
        shutil.rmtree(out, ignore_errors=True)
        generate_study(out, instances=n, series=max(1, n // 250), seed=seed)
    return out


def fresh(tag: str) -> Path:
    d = WORK / "run" / tag
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def linked_copy(src: Path, dest: Path) -> list[Path]:
    """The inbox as a user's copy would leave it; hard links keep the generated set intact."""
    files = []
    for f in sorted(src.rglob("*.dcm")):
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        files.append(target)
    os.sync()  # measure ingest, not the page cache flush of the copy we just made
    return files


def folder_ingest(src: Path, mode: str, workers: int) -> dict[str, Any]:
    from relaypacs_agent.ingest.pipeline import Ingestor, Source
    from relaypacs_agent.store.db import Store

    d = fresh(f"folder-{mode}-{workers}")
    files = linked_copy(src, d / "inbox")
    size = sum(f.stat().st_size for f in files)
    store = Store(d / "agent.db")
    ing = Ingestor(store, spool_dir=d / "spool", quarantine_dir=d / "q", max_instance_bytes=1 << 32)
    source = Source(keep_original=mode == "copy")
    t = time.perf_counter()
    counts = ing.ingest_many(((f, source) for f in files), workers=workers)
    elapsed = time.perf_counter() - t
    store.close()
    assert counts == {"accepted": len(files)}, counts
    return {
        "path": f"folder ({mode}, {workers} worker{'s' if workers > 1 else ''})",
        "instances": len(files),
        "bytes": size,
        "seconds": elapsed,
    }


def storescu_binary() -> str:
    for folder in ("/usr/bin", "/usr/local/bin"):
        p = Path(folder) / "storescu"
        if p.exists():
            return str(p)
    raise SystemExit("dcmtk's storescu is needed (make system-deps)")


def dimse_ingest(src: Path) -> dict[str, Any]:
    import tempfile

    from relaypacs_agent.ingest.dimse import StoreSCP
    from relaypacs_agent.ingest.pipeline import Ingestor
    from relaypacs_agent.store.db import Store

    d = fresh("dimse")
    files = sorted(src.rglob("*.dcm"))
    size = sum(f.stat().st_size for f in files)
    store = Store(d / "agent.db")
    ing = Ingestor(store, spool_dir=d / "spool", quarantine_dir=d / "q", max_instance_bytes=1 << 32)
    (d / "incoming").mkdir()
    tempfile.tempdir = str(d / "incoming")  # as the agent does: received files on the spool's disk
    scp = StoreSCP(ing, host="127.0.0.1", port=0)
    scp.start()
    try:
        t = time.perf_counter()
        proc = subprocess.run(
            [storescu_binary(), "-aec", "RELAYPACS", "+sd", "+r", "127.0.0.1",
             str(scp.bound_port), str(src)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        elapsed = time.perf_counter() - t
    finally:
        scp.stop()
        tempfile.tempdir = None
        store.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert scp.received == {"accepted": len(files)}, scp.received
    return {"path": "C-STORE (storescu, 1 association)", "instances": len(files), "bytes": size,
            "seconds": elapsed}  # fmt: skip


def vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def child(kind: str, src: Path) -> None:
    """Run in a fresh process; prints its peak RSS in kB as the last line."""
    quiet_logs()
    result = folder_ingest(src, "move", 2) if kind == "folder" else dimse_ingest(src)
    result["peak_rss_kb"] = vm_hwm_kb()
    print(json.dumps(result))


def peak_rss(kind: str, src: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(src)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets, for a smoke run")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SRC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    quiet_logs()
    n = 200 if args.quick else 600
    big_n = 1000 if args.quick else 4000  # 4000 x 512 KB = 2 GB
    src = dataset(n, "throughput", 1)
    rows = [
        folder_ingest(src, "move", 1),
        folder_ingest(src, "move", 2),
        folder_ingest(src, "copy", 2),
        dimse_ingest(src),
    ]
    big = dataset(big_n, "rss", 2)
    quarter = dataset(big_n // 4, "rss", 3)
    rss = []
    for kind in ("folder", "dimse"):
        for s in (quarter, big):
            r = peak_rss(kind, s)
            r["path"] = f"{kind} peak RSS"
            rss.append(r)
    shutil.rmtree(WORK / "run", ignore_errors=True)

    kb = rows[0]["bytes"] / rows[0]["instances"] / 1024
    print(
        f"\ningest benchmark ({platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}); instances of ~{kb:.0f} KB\n"
    )
    head = ("path", "instances", "MB", "s", "inst/s", "MB/s", "peak RSS MB")
    print(f"{head[0]:<40} {head[1]:>9} {head[2]:>8} {head[3]:>7} {head[4]:>8} {head[5]:>7} "
          f"{head[6]:>12}")  # fmt: skip
    for r in rows + rss:
        r["instances_per_s"] = r["instances"] / r["seconds"]
        r["mb_per_s"] = r["bytes"] / 1e6 / r["seconds"]
        peak = f"{r['peak_rss_kb'] / 1024:.0f}" if "peak_rss_kb" in r else ""
        print(f"{r['path']:<40} {r['instances']:>9} {r['bytes'] / 1e6:>8.0f} {r['seconds']:>7.2f} "
              f"{r['instances_per_s']:>8.0f} {r['mb_per_s']:>7.1f} {peak:>12}")  # fmt: skip
    out = Path(__file__).with_name("results.json")
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "node": platform.node(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "throughput": rows,
                "peak_rss": rss,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
