"""Forwarding benchmark: hub to Orthanc, beside Orthanc's own STOW-RS ingest of the same files.

    uv run python bench/forward/run.py                  # 1000 x 512 KB CT instances (~500 MB)
    uv run python bench/forward/run.py --instances 200  # a quicker look
    uv run python bench/forward/run.py --repeat 3       # median of three runs per row

Rows, each against a fresh Orthanc 1.10 (DICOMweb plugin, same configuration):

- ``direct dicomweb-client``: the files, already parsed into pydicom datasets in memory, sent by
  dicomweb-client's ``store_instances`` from one process in batches of ``--batch`` (its own
  retry off, as DESIGN.md says to); timed from the first request to the last answer.
- ``direct httpx (raw bytes)``: the same batches as raw Part 10 bytes in one multipart body per
  request with a Content-Length, from memory: the archive's ingest rate with the least client
  work, for reference.
- ``hub -> Orthanc``: a ``relaypacs-hub serve`` process (SQLite, local object store, one worker,
  default destination settings: two STOW-RS requests of the study in flight) already holding the
  study; timed from the commit request to the job being done, which includes streaming from the
  object store, recording progress per batch and the QIDO-RS confirmation of every instance.
- ``hub, 1 request in flight``: the same with ``max_parallel_requests = 1``, one request at a
  time like the direct client.

Prints a table and writes bench/forward/results.json. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import secrets
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench" / "forward"
sys.path.insert(0, str(ROOT))

from tests.support.orthanc import OrthancServer  # noqa: E402
from tests.support.processes import HubProcess  # noqa: E402


def dataset(n: int, rows: int, seed: int = 1000) -> list[Path]:
    from relaypacs_dev.generate import generate_study

    out = WORK / f"ct-{n}-{rows}"
    files = sorted(out.rglob("*.dcm"))
    if len(files) != n:
        shutil.rmtree(out, ignore_errors=True)
        study = generate_study(
            out, instances=n, series=max(1, n // 250), seed=seed, rows=rows, columns=rows
        )
        files = sorted(study.files)
    return files


def batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_dicomweb_client(orthanc: OrthancServer, files: list[Path], batch: int) -> float:
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient

    datasets = [pydicom.dcmread(f) for f in files]
    session = requests.Session()
    client = DICOMwebClient(url=orthanc.dicomweb_url, session=session, timeout=600)
    # Its retry re-sends a half-consumed chunked body (DESIGN.md, known traps): off.
    client.set_http_retry_params(retry=False)
    start = time.perf_counter()
    for group in batches(datasets, batch):
        client.store_instances(group)
    elapsed = time.perf_counter() - start
    session.close()
    return elapsed


def run_httpx_raw(orthanc: OrthancServer, files: list[Path], batch: int) -> float:
    payloads = [f.read_bytes() for f in files]
    boundary = f"bench-{secrets.token_hex(16)}"
    delimiter = b"--" + boundary.encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    with httpx.Client(timeout=600) as client:
        start = time.perf_counter()
        for group in batches(payloads, batch):
            chunks: list[bytes] = []
            for part in group:
                chunks += [delimiter, b"\r\nContent-Type: application/dicom\r\n\r\n", part, b"\r\n"]
            chunks += [delimiter, b"--\r\n"]
            r = client.post(
                f"{orthanc.dicomweb_url}/studies",
                content=b"".join(chunks),
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
            r.raise_for_status()
        return time.perf_counter() - start


def run_hub(
    orthanc: OrthancServer, files: list[Path], batch: int, tag: str, parallel: int = 2
) -> float:
    from relaypacs_shared.wire import format_content_digest

    work = WORK / "run" / tag
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    destinations = work / "destinations.toml"
    destinations.write_text(
        f'[[destinations]]\nname = "orthanc"\ntype = "dicomweb"\nprofile = "orthanc"\n'
        f'url = "{orthanc.http_url}"\nmax_batch_instances = {batch}\n'
        f"max_batch_bytes = {1024**3}\ntimeout_seconds = 600\n"
        f"max_parallel_requests = {parallel}\n"
    )
    hub = HubProcess(
        work,
        destinations_file=str(destinations),
        worker_poll_seconds="0.05",
        log_level="warning",
    )
    hub.start()
    try:
        with httpx.Client(base_url=hub.url, timeout=120) as client:
            manifest = []
            study_uid = ""
            import pydicom

            for f in files:
                data = f.read_bytes()
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                study_uid = str(ds.StudyInstanceUID)
                sha = hashlib.sha256(data).hexdigest()
                r = client.put(
                    f"/api/v1/studies/{study_uid}/instances/{ds.SOPInstanceUID}",
                    content=data,
                    headers={"Content-Digest": format_content_digest(sha)},
                )
                r.raise_for_status()
                manifest.append({"sop_instance_uid": str(ds.SOPInstanceUID), "sha256": sha})
            start = time.perf_counter()
            r = client.post(f"/api/v1/studies/{study_uid}/commit", json={"instances": manifest})
            r.raise_for_status()
            while True:
                body = client.get(f"/api/v1/studies/{study_uid}").json()
                (dest,) = body["destinations"]
                if dest["state"] == "done":
                    elapsed = time.perf_counter() - start
                    break
                if dest["state"] == "dead":
                    raise RuntimeError(f"hub job died: {dest['last_error']}")
                time.sleep(0.05)
            assert dest["confirmed_instances"] == len(files)
            return elapsed
    finally:
        hub.terminate()


def measure(
    name: str, files: list[Path], repeat: int, fn: Callable[[OrthancServer], float]
) -> dict[str, Any]:
    times = []
    for i in range(repeat):
        with OrthancServer() as orthanc:
            times.append(fn(orthanc))
            held = orthanc.instance_count()
            if held != len(files):
                raise RuntimeError(f"{name} run {i}: Orthanc holds {held} of {len(files)}")
    seconds = statistics.median(times)
    size = sum(f.stat().st_size for f in files)
    return {
        "name": name,
        "seconds": round(seconds, 3),
        "runs": [round(t, 3) for t in times],
        "instances_per_second": round(len(files) / seconds, 1),
        "mb_per_second": round(size / 1e6 / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=512, help="rows = columns of each image")
    parser.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument(
        "--paths",
        default="client,raw,hub,hub1",
        help="rows to run: client, raw, hub (default settings), hub1 (max_parallel_requests=1)",
    )
    args = parser.parse_args()

    files = dataset(args.instances, args.rows)
    size = sum(f.stat().st_size for f in files)
    runners: dict[str, tuple[str, Callable[[OrthancServer], float]]] = {
        "client": (
            "direct dicomweb-client",
            lambda o: run_dicomweb_client(o, files, args.batch),
        ),
        "raw": ("direct httpx (raw bytes)", lambda o: run_httpx_raw(o, files, args.batch)),
        "hub": ("hub -> Orthanc", lambda o: run_hub(o, files, args.batch, "hub")),
        "hub1": (
            "hub, 1 request in flight",
            lambda o: run_hub(o, files, args.batch, "hub1", parallel=1),
        ),
    }
    chosen = [p.strip() for p in args.paths.split(",") if p.strip()]
    rows = [measure(runners[p][0], files, args.repeat, runners[p][1]) for p in chosen]
    by_path = dict(zip(chosen, rows, strict=True))
    baseline = by_path["client"]["instances_per_second"] if "client" in by_path else None
    for row in rows:
        row["vs_dicomweb_client"] = (
            round(row["instances_per_second"] / baseline, 3) if baseline else None
        )

    print(
        f"\nForwarding {len(files)} instances ({size / 1e6:.0f} MB, {args.rows}x{args.rows} CT)"
        f" to Orthanc, batches of {args.batch}, median of {args.repeat} run(s)\n"
    )
    header = f"{'path':<28}{'seconds':>9}{'inst/s':>9}{'MB/s':>8}{'vs direct':>11}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = row["vs_dicomweb_client"]
        print(
            f"{row['name']:<28}{row['seconds']:>9.2f}{row['instances_per_second']:>9.1f}"
            f"{row['mb_per_second']:>8.1f}{(f'{ratio:.0%}' if ratio else '-'):>11}"
        )
    hub_ratio = by_path["hub"]["vs_dicomweb_client"] if "hub" in by_path else None
    if hub_ratio is not None:
        verdict = "met" if hub_ratio >= 0.9 else "NOT met"
        print(f"\ngoal: hub >= 90% of direct dicomweb-client -> {hub_ratio:.0%} ({verdict})")
    result = {
        "benchmark": "forward",
        "instances": len(files),
        "bytes": size,
        "rows_columns": args.rows,
        "batch": args.batch,
        "repeat": args.repeat,
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "results": rows,
        "goal_met": None if hub_ratio is None else hub_ratio >= 0.9,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
