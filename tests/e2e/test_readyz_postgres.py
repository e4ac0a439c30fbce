"""``/readyz`` follows PostgreSQL: a hub on its own PostgreSQL cluster (initdb, pg_ctl) answers
503 naming the database while the cluster is stopped, keeps answering ``/healthz`` and serving
what needs no database, and is ready again once PostgreSQL is back, with no restart."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.orthanc import free_port
from tests.support.processes import HubProcess, wait_for

pytestmark = pytest.mark.integration


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.fail("PostgreSQL server binaries are missing (Debian's postgresql package)")
    return Path(found[-1]).parent


class Cluster:
    """A throwaway PostgreSQL cluster on a free port, run as the ``postgres`` user."""

    def __init__(self, root: Path) -> None:
        self.bin = _pg_bin()
        self.data = root / "pgdata"
        self.port = free_port()
        self.log = root / "pg.log"
        root.chmod(0o755)  # the postgres user must reach its data folder
        self.data.mkdir()
        self.log.touch()
        shutil.chown(self.data, "postgres", "postgres")
        shutil.chown(self.log, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres"
        )

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True,
                       cwd="/", timeout=120)  # fmt: skip

    def start(self) -> None:
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.data}"
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                          "-o", opts, "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
        )

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("runs its own PostgreSQL cluster as the postgres user (root needed)")
    # pytest's tmp folders are private to root: the cluster lives in one postgres can reach.
    root = Path(tempfile.mkdtemp(prefix="relaypacs-pg-"))
    c = Cluster(root)
    c.start()
    try:
        yield c
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(c.bin / "pg_ctl"), "-D", str(c.data),
             "-m", "immediate", "stop"],
            capture_output=True, cwd="/",
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def test_readyz_is_503_while_postgresql_is_down_and_200_when_it_is_back(
    tmp_path: Path, cluster: Cluster
) -> None:
    hub = HubProcess(tmp_path, database_url=cluster.url, readiness_timeout_seconds="2")
    hub.start()
    try:
        ready = httpx.get(hub.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["database"] == "ok"

        cluster.stop()
        t0 = time.monotonic()
        down = httpx.get(hub.url + "/readyz", timeout=10)
        assert down.status_code == 503, down.text
        body = down.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["database"].startswith("failed:"), body
        assert body["checks"]["object_store"] == "ok"
        assert time.monotonic() - t0 < 5  # answered within the readiness timeout, not hung
        # Liveness is not readiness: the process is fine, so /healthz stays 200 (no restart).
        assert httpx.get(hub.url + "/healthz", timeout=10).status_code == 200
        # A route that needs the database says so with 503, not a 500.
        login = httpx.post(
            hub.url + "/api/v1/auth/login", json={"username": "x", "password": "y"}, timeout=10
        )
        assert login.status_code == 503, login.text
        assert hub.alive()

        cluster.start()
        wait_for(
            lambda: httpx.get(hub.url + "/readyz", timeout=10).status_code == 200,
            30,
            "/readyz to be 200 again once PostgreSQL is back",
        )
        assert httpx.get(hub.url + "/readyz", timeout=10).json()["checks"]["database"] == "ok"
    finally:
        assert hub.terminate() == 0, hub.log()[-3000:]
    assert "Traceback" not in hub.log(), hub.log()[-3000:]
