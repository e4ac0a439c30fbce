"""Load benchmark: hundreds of simulated agents against hub replicas behind nginx.

    make bench-load                       # 200 agents, 10 min, 2 replicas (one killed); 1-2-3 curve
    uv run python bench/load/run.py --agents 50 --minutes 2  # a quicker look
    uv run python bench/load/run.py --curve 1,2,3 --minutes 3   # throughput by replica count
    uv run python bench/load/run.py --curve 1,2,3 --replica-cpus 0.3  # each replica on 0.3 CPU

What runs, all real processes on this machine:

- ``relaypacs-hub serve`` replicas (``--replicas``, workers off) behind nginx (Debian's package:
  request buffering off, no body limit, keep-alive to the upstreams, a replica that fails is
  skipped), sharing one PostgreSQL database and one object store folder (the local object store:
  moto, the only S3 server installable here, keeps objects in its own Python process's memory and
  would measure itself; MinIO in production);
- one ``relaypacs-hub worker`` delivering every study by C-STORE to dcmtk's ``storescp``, the
  archive against which nothing lost and nothing duplicated is checked;
- the simulated agents (``bench/load/agents.py``): each an enrolled device of one of
  ``--facilities`` facilities, with its own HTTP connections, sending unique studies in a mix of
  small two-image studies (as a CR/DX), 40-image MR-sized series and 300-image CTs, some STAT,
  each study followed by a think time, over a link of ``--link-mbps``.

Also measured in the same run: the bound ``sha256 + zstd -d + write`` alone achieve on the same
segments with every core, which the hub's ingest is compared with.

Prints a table and writes bench/load/results.json. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import zstandard

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench" / "load"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agents import (  # noqa: E402
    AgentConfig,
    SimulatedAgent,
    Stats,
    Template,
    build_segment,
    make_study,
)
from tests.support.orthanc import free_port  # noqa: E402
from tests.support.processes import HubProcess, _Proc, wait_for  # noqa: E402
from tests.support.storescp import StoreSCP  # noqa: E402

PG_HOST = os.environ.get("RELAYPACS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("RELAYPACS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("RELAYPACS_TEST_PG_USER", "postgres")
ADMIN_TOKEN = "load-admin-" + "k" * 40

# kind, share of studies, generate_study arguments
MIX: list[tuple[str, float, dict[str, Any]]] = [
    ("small (2 x 2 MB, as a CR/DX)", 0.80, {"instances": 2, "rows": 1024, "columns": 1024}),
    ("series (40 x 128 KB, as an MR)", 0.17, {"instances": 40, "rows": 256, "columns": 256}),
    ("CT (300 x 512 KB)", 0.03, {"instances": 300, "rows": 512, "columns": 512, "series": 2}),
]


def log(msg: str) -> None:
    print(f"[bench-load {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def templates() -> list[tuple[float, Template]]:
    from relaypacs_dev.generate import generate_study

    out = []
    for i, (kind, share, kw) in enumerate(MIX):
        folder = WORK / "templates" / str(i)
        files = sorted(folder.rglob("*.dcm"))
        if len(files) != kw["instances"]:
            shutil.rmtree(folder, ignore_errors=True)
            files = sorted(generate_study(folder, seed=7000 + i, **kw).files)
        out.append((share, Template.load(kind, files)))
    return out


# -- the bound: sha256 + zstd -d + write, every core ------------------------------------------


def _bound_worker(args: tuple[list[bytes], str]) -> int:
    segments, folder = args
    dctx = zstandard.ZstdDecompressor()
    raw = 0
    import io

    from relaypacs_shared.segments import read_index

    for seg in segments:
        f = io.BytesIO(seg)
        index = read_index(f, len(seg))  # the segment's own sha256 and index
        for e in index.entries:
            data = dctx.decompress(seg[e.offset : e.offset + e.length], max_output_size=e.size)
            if hashlib.sha256(data).hexdigest() != e.sha256:
                raise RuntimeError("bound: entry hash")
            path = Path(folder) / e.sop_instance_uid
            with path.open("wb") as out:
                out.write(data)
            path.unlink()
            raw += len(data)
    return raw


def measure_bound(tpls: list[tuple[float, Template]], cores: int) -> dict[str, float]:
    """Raw MB/s that hashing, decompressing and writing alone reach on the mix with every core."""
    rng = random.Random(5)
    segs: list[bytes] = []
    total = 0
    while total < 400 * 1024 * 1024:
        r, tpl = rng.random(), tpls[-1][1]
        for share, t in tpls:
            if r < share:
                tpl = t
                break
            r -= share
        study = make_study(tpl, rng, False)
        for i in range(0, len(study.instances), 16):
            body, _ = build_segment(study.study_instance_uid, study.instances[i : i + 16])
            segs.append(body)
        total += study.raw_bytes
    per = [segs[i::cores] for i in range(cores)]
    with tempfile.TemporaryDirectory(dir=WORK) as folder, ProcessPoolExecutor(cores) as pool:
        list(pool.map(_bound_worker, [(per[0][:2], folder)] * 1))  # warm up the pool
        t0 = time.perf_counter()
        raw = sum(pool.map(_bound_worker, [(p, folder) for p in per]))
        seconds = time.perf_counter() - t0
    return {"raw_mb": raw / 1e6, "seconds": seconds, "mb_per_s": raw / 1e6 / seconds}


# -- processes ---------------------------------------------------------------------------------


class WorkerProcess(_Proc):
    name = "worker"

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(
            [sys.executable, "-m", "relaypacs_hub.cli", "worker"], env, workdir / "worker.log"
        )


class Nginx:
    """nginx from Debian in the foreground, with its own prefix, as the replicas' load balancer."""

    def __init__(self, workdir: Path, upstreams: list[int]) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in upstreams
        )
        (self.dir / "nginx.conf").write_text(
            f"""
user root;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    upstream relaypacs_hub {{
{servers}
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_read_timeout 600s;
        proxy_send_timeout 600s;
        client_body_timeout 600s;
        proxy_next_upstream error timeout;
        location / {{ proxy_pass http://relaypacs_hub; }}
    }}
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise SystemExit("nginx is missing: apt-get install nginx-light (make bench-load does)")
        self.proc = subprocess.Popen(
            [nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "stderr.log").open("ab"),
        )

    def pids(self) -> list[int]:
        return [int(p) for p in _children(self.proc.pid)] + [self.proc.pid] if self.proc else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


class CpuLimit:
    """A CPU quota for one process (and the threads and children it has), as a replica on a
    node of its own would have: a cgroup with ``cpus`` CPUs' worth of time per 100 ms period
    (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``). Root only."""

    def __init__(self, name: str, cpus: float) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        period = 100_000
        quota = int(cpus * period)
        if v2.exists() and "cpu" in v2.read_text().split():
            self.dir = Path("/sys/fs/cgroup") / name
            self.dir.mkdir(exist_ok=True)
            (self.dir / "cpu.max").write_text(f"{quota} {period}")
        else:
            self.dir = Path("/sys/fs/cgroup/cpu") / name
            if not self.dir.parent.is_dir():
                raise SystemExit("--replica-cpus needs the cgroup cpu controller (run as root)")
            self.dir.mkdir(exist_ok=True)
            (self.dir / "cpu.cfs_period_us").write_text(str(period))
            (self.dir / "cpu.cfs_quota_us").write_text(str(quota))

    def add(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # once its processes have ended


CLK = os.sysconf("SC_CLK_TCK")


def proc_sample(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of a process, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        return cpu, rss
    except (OSError, ValueError, IndexError):
        return None


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# -- one run -----------------------------------------------------------------------------------


async def _admin_sql(sql: str) -> None:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def enroll(base: str, n: int, facilities: int) -> list[tuple[str, str]]:
    """Enroll ``n`` devices through the load balancer: (facility, bearer token) each."""
    out = []
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for i in range(n):
            facility = f"facility-{i % facilities:04d}"
            r = await http.post(
                "/api/v1/devices/enrollment-codes", json={"facility": facility}, headers=admin
            )
            r.raise_for_status()
            r2 = await http.post(
                "/api/v1/devices/enroll", json={"code": r.json()["code"], "name": f"agent-{i:04d}"}
            )
            r2.raise_for_status()
            body = r2.json()
            out.append((facility, f"rpd_{body['device_id']}.{body['secret']}"))
    return out


async def monitor(
    procs: dict[str, list[int]], db: str, stop: asyncio.Event, samples: list[dict[str, Any]]
) -> None:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        while not stop.is_set():
            row: dict[str, Any] = {"t": time.monotonic()}
            for name, pids in procs.items():
                got = [s for s in (proc_sample(p) for p in pids) if s is not None]
                row[name] = (sum(c for c, _ in got), sum(r for _, r in got)) if got else None
            row["pg_connections"] = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", db
            )
            row["pg_lock_waits"] = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND wait_event_type = 'Lock'",
                db,
            )
            samples.append(row)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)
    finally:
        await conn.close()


def run_once(
    args: argparse.Namespace, replicas: int, tpls: list[tuple[float, Template]]
) -> dict[str, Any]:
    run_dir = WORK / f"run-{replicas}r-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    db = f"relaypacs_load_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin_sql(f'CREATE DATABASE "{db}"'))
    db_url = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"
    scp = StoreSCP(aet="ARCHIVE")
    scp.start()
    hubs: list[HubProcess] = []
    workers: list[WorkerProcess] = []
    nginx: Nginx | None = None
    limits: list[CpuLimit] = []
    try:
        destinations = run_dir / "destinations.toml"
        destinations.write_text(
            '[[destinations]]\nname = "archive"\ntype = "dimse"\nhost = "127.0.0.1"\n'
            f'port = {scp.port}\ncalled_aet = "ARCHIVE"\n'
        )
        shared = {
            "database_url": db_url,
            "destinations_file": str(destinations),
            "object_store": "local",
            "object_store_dir": str(run_dir / "objects"),
            "upload_dir": str(run_dir / "uploads"),
            "worker_enabled": "false",
            "admin_token": ADMIN_TOKEN,
            "anonymous_agents": "false",
            "log_level": "warning",
            # 200 agents enroll from this one address within seconds.
            "enroll_rate_per_ip": "0",
        }
        subprocess.run(
            [sys.executable, "-m", "relaypacs_hub.cli", "migrate"],
            env={
                **os.environ,
                **{f"RELAYPACS_HUB_{k.upper()}": v for k, v in shared.items()},
                "RELAYPACS_HUB_DATA_DIR": str(run_dir / "migrate"),
            },
            check=True,
            capture_output=True,
        )
        for i in range(replicas):
            (run_dir / f"api{i}").mkdir()
            hubs.append(HubProcess(run_dir / f"api{i}", **shared))  # type: ignore[arg-type]
            hubs[-1].start()
            if args.replica_cpus:
                limits.append(CpuLimit(f"relaypacs-bench-{run_dir.name}-api{i}", args.replica_cpus))
                assert hubs[-1].proc is not None
                limits[-1].add(hubs[-1].proc.pid)
        for hub in hubs:
            wait_for(functools.partial(_answers, hub.url), 60, f"hub replica on {hub.port}")
        for w in range(args.workers):
            (run_dir / f"w{w}").mkdir()
            workers.append(
                WorkerProcess(
                    run_dir / f"w{w}",
                    {
                        **{f"RELAYPACS_HUB_{k.upper()}": v for k, v in shared.items()},
                        "RELAYPACS_HUB_DATA_DIR": str(run_dir / f"w{w}"),
                        "RELAYPACS_HUB_WORKER_POLL_SECONDS": "1",
                        "RELAYPACS_HUB_WORKER_CONCURRENCY": str(args.worker_concurrency),
                        "RELAYPACS_HUB_WORKER_METRICS_PORT": str(free_port()),
                    },
                )
            )
            workers[-1].start()
        nginx = Nginx(run_dir, [h.port for h in hubs])
        nginx.start()
        wait_for(lambda: _answers(nginx.url), 30, "nginx")
        return asyncio.run(drive(args, replicas, tpls, hubs, workers, nginx, scp, db, run_dir))
    finally:
        for proc in [*workers, *hubs]:
            if proc is not None and proc.alive():
                proc.terminate()
        if nginx:
            nginx.stop()
        for limit in limits:
            limit.remove()
        scp.stop()
        asyncio.run(_admin_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def drive(
    args: argparse.Namespace,
    replicas: int,
    tpls: list[tuple[float, Template]],
    hubs: list[HubProcess],
    workers: list[WorkerProcess],
    nginx: Nginx,
    scp: StoreSCP,
    db: str,
    run_dir: Path,
) -> dict[str, Any]:
    log(f"{replicas} replica(s): enrolling {args.agents} agents")
    creds = await enroll(nginx.url, args.agents, args.facilities)
    stats = Stats()
    gen_pool = asyncio.Semaphore(2)
    agents = [
        SimulatedAgent(
            AgentConfig(
                base_url=nginx.url,
                token=token,
                facility=facility,
                name=f"agent-{i}",
                think_seconds=args.think,
                link_mbps=args.link_mbps,
                segment_bytes=args.segment_mb * 1024 * 1024,
                chunk_bytes=args.chunk_mb * 1024 * 1024,
            ),
            tpls,
            stats,
            random.Random(1000 + i),
            args.stat_share,
            gen_pool,
        )
        for i, (facility, token) in enumerate(creds)
    ]
    procs = {
        **{f"hub{i}": [h.proc.pid] for i, h in enumerate(hubs) if h.proc},
        "workers": [w.proc.pid for w in workers if w.proc],
        "nginx": nginx.pids(),
        "postgres": postgres_pids(),
        "load generator": [os.getpid()],
    }
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    mon = asyncio.create_task(monitor(procs, db, stop, samples))
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60
    killed_at: float | None = None

    async def progress() -> None:
        nonlocal killed_at
        while time.monotonic() < deadline:
            await asyncio.sleep(30)
            el = time.monotonic() - t0
            log(
                f"{el:5.0f} s: {stats.studies} studies, {stats.raw_bytes / 1e6:.0f} MB accepted "
                f"({stats.raw_bytes / 1e6 / el:.1f} MB/s), errors {sum(stats.errors.values())}"
            )
            if args.kill and replicas > 1 and killed_at is None and el >= args.minutes * 30:
                hubs[0].kill()
                killed_at = el
                log(f"killed replica 0 (port {hubs[0].port}) at {el:.0f} s")

    prog = asyncio.create_task(progress())
    await asyncio.gather(*(a.run(deadline) for a in agents))
    sending_ended = time.monotonic() - t0
    prog.cancel()
    for a in agents:
        await a.close()
    expected = {sop for sops in stats.committed.values() for sop in sops}
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=db)
    try:
        held = {r[0] for r in await conn.fetch("SELECT sop_instance_uid FROM instances")}
        db_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    waited0 = time.monotonic()
    if workers:
        log(f"sending ended after {sending_ended:.0f} s; waiting for the archive")

        def archived() -> int:
            return sum(1 for _ in scp.files())

        # storescp's folder is the archive: nothing to await but its files.
        while archived() < len(expected) and time.monotonic() - waited0 < args.drain_minutes * 60:  # noqa: ASYNC110
            await asyncio.sleep(5)
        received = scp.received()
        checked_against = "archive (storescp)"
    else:  # ingest only: what the hub holds is what it acknowledged
        received = Counter({sop: 1 for sop in held})
        checked_against = "hub (no workers)"
    drain = time.monotonic() - waited0
    stop.set()
    await mon
    # Lost: acknowledged by a commit, yet neither at the hub nor in the archive. Not yet
    # delivered when the drain time ran out is reported apart.
    lost = sorted(expected - held - set(received))
    undelivered = sorted((expected & held) - set(received))
    duplicated = sorted(u for u, n in received.items() if n > 1)
    unexpected = sorted(set(received) - expected)
    hub_instances = len(held)

    in_window = [b for t, b in stats.timeline if t - t0 <= args.minutes * 60]
    in_window_studies, in_window_bytes = len(in_window), sum(in_window)
    cpu = {
        name: (samples[-1][name][0] - samples[0][name][0])
        for name in procs
        if samples and samples[0].get(name) and samples[-1].get(name)
    }
    rss = {
        name: [s[name][1] for s in samples if s.get(name)] for name in procs if name != "postgres"
    }
    hub_cpu = sum(v for k, v in cpu.items() if k.startswith("hub"))
    gb = stats.raw_bytes / 1e9
    result = {
        "replicas": replicas,
        "replica_cpus": args.replica_cpus or None,
        "agents": args.agents,
        "facilities": args.facilities,
        "minutes": args.minutes,
        "sending_seconds": round(sending_ended, 1),
        "drain_seconds": round(drain, 1),
        "studies": stats.studies,
        "stat_studies": stats.stat_studies,
        "instances": stats.instances,
        "raw_mb": round(stats.raw_bytes / 1e6, 1),
        "wire_mb": round(stats.wire_bytes / 1e6, 1),
        # Sustained rates: what was committed within the run's minutes (studies still in
        # flight at the end finish afterwards and count in the totals, not in the rates).
        "studies_per_min": round(in_window_studies / args.minutes, 1),
        "mb_per_s": round(in_window_bytes / 1e6 / (args.minutes * 60), 2),
        "latency_ms": {
            op: {
                "n": len(v),
                "p50": round(pct(v, 0.50) * 1000, 1),
                "p95": round(pct(v, 0.95) * 1000, 1),
                "p99": round(pct(v, 0.99) * 1000, 1),
            }
            for op, v in sorted(stats.latency.items())
        },
        "errors": dict(stats.errors),
        "killed_replica_at_s": killed_at,
        "studies_after_kill": sum(1 for t, _ in stats.timeline if t - t0 > killed_at)
        if killed_at is not None
        else None,
        "mb_per_s_by_minute": [
            round(sum(b for t, b in stats.timeline if m * 60 <= t - t0 < (m + 1) * 60) / 60e6, 2)
            for m in range(int(sending_ended // 60))
        ],
        "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
        "hub_cpu_seconds_per_gb": round(hub_cpu / gb, 1) if gb else None,
        "rss_mb": {
            k: {
                "first": round(v[min(len(v) - 1, 2)] / 1e6, 1),
                "max": round(max(v) / 1e6, 1),
                "last": round(v[-1] / 1e6, 1),
            }
            for k, v in rss.items()
            if v
        },
        "db_bytes": db_bytes,
        "db_bytes_per_instance": round(db_bytes / len(held)) if held else None,
        "pg_connections_max": max((s["pg_connections"] for s in samples), default=0),
        "pg_lock_waits_max": max((s["pg_lock_waits"] for s in samples), default=0),
        "pg_lock_waits_mean": round(statistics.fmean(s["pg_lock_waits"] for s in samples), 2)
        if samples
        else 0,
        "archive": {
            "checked_against": checked_against,
            "undelivered_at_end": len(undelivered),
            "expected": len(expected),
            "received": sum(received.values()),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "unexpected": len(unexpected),
            "hub_instances": hub_instances,
        },
        "rss_series_mb": {
            k: [round(x / 1e6) for x in v[:: max(1, len(v) // 20)]] for k, v in rss.items() if v
        },
    }
    if lost:
        log(f"LOST {len(lost)} instances, e.g. {lost[:3]}")
    if duplicated:
        log(f"DUPLICATED {len(duplicated)} instances, e.g. {duplicated[:3]}")
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict[str, Any]], bound: dict[str, float] | None) -> str:
    lines = [
        "| replicas | agents | min | studies | studies/min | MB/s accepted "
        "| p95 manifest / PATCH / commit (ms) | errors | hub CPU-s per GB "
        "| hub RSS first -> last (MB) | lost | duplicated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r["latency_ms"]
        p95 = " / ".join(
            str(lat.get(op, {}).get("p95", "-")) for op in ("manifest", "patch", "commit")
        )
        rss = ", ".join(
            f"{v['first']:.0f} -> {v['last']:.0f}"
            for k, v in r["rss_mb"].items()
            if k.startswith("hub")
        )
        lines.append(
            f"| {r['replicas']}{' (one killed)' if r['killed_replica_at_s'] else ''}"
            f"{' x ' + str(r['replica_cpus']) + ' CPU' if r.get('replica_cpus') else ''} "
            f"| {r['agents']} "
            f"| {r['minutes']} | {r['studies']} | {r['studies_per_min']} | {r['mb_per_s']} | {p95} "
            f"| {sum(r['errors'].values())} | {r['hub_cpu_seconds_per_gb']} | {rss} "
            f"| {r['archive']['lost']} | {r['archive']['duplicated']} |"
        )
    if bound:
        lines.append(
            f"| bound: sha256 + zstd -d + write alone, {os.cpu_count()} processes | | | | "
            f"| {bound['mb_per_s']:.1f} | | | | | | |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--facilities", type=int, default=50)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument(
        "--curve", default="", help="replica counts to run one after another, e.g. 1,2,3"
    )
    p.add_argument(
        "--kill", action="store_true", help="SIGKILL one replica half-way (replicas > 1)"
    )
    p.add_argument(
        "--think", type=float, default=20.0, help="mean seconds between an agent's studies"
    )
    p.add_argument("--link-mbps", type=float, default=20.0, help="each agent's uplink (0: unpaced)")
    p.add_argument("--stat-share", type=float, default=0.1)
    p.add_argument("--segment-mb", type=int, default=16)
    p.add_argument("--chunk-mb", type=int, default=4)
    p.add_argument("--drain-minutes", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=1, help="worker processes (0: ingest only)")
    p.add_argument("--worker-concurrency", type=int, default=4)
    p.add_argument("--no-bound", action="store_true")
    p.add_argument(
        "--replica-cpus",
        type=float,
        default=0.0,
        help="give each replica this many CPUs (a cgroup quota), as on a node of its own",
    )
    p.add_argument("--keep", action="store_true", help="keep the run folders under var/bench/load")
    p.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    log("templates")
    tpls = templates()
    bound = None
    if not args.no_bound:
        log("bound: sha256 + zstd -d + write on every core")
        bound = measure_bound(tpls, os.cpu_count() or 1)
        log(f"bound: {bound['mb_per_s']:.1f} MB/s")
    counts = [int(c) for c in args.curve.split(",")] if args.curve else [args.replicas]
    results = []
    for n in counts:
        results.append(run_once(args, n, tpls))
        log(json.dumps({k: results[-1][k] for k in ("replicas", "studies", "mb_per_s", "archive")}))
    print()
    print(table(results, bound))
    for r in results:
        if bound:
            r["share_of_bound"] = round(r["mb_per_s"] / bound["mb_per_s"], 3)
    Path(args.out).write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "kernel": platform.release(),
                },
                "argv": sys.argv[1:],
                "bound": bound,
                "runs": results,
            },
            indent=2,
        )
    )
    bad = [
        r
        for r in results
        if r["archive"]["lost"] or r["archive"]["duplicated"] or r["archive"]["undelivered_at_end"]
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
