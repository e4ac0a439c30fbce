"""Two hub replicas behind nginx, simulated agents sending, one replica killed half-way: the
uploads go on through the other and every instance reaches the archive exactly once.

Runs the load benchmark (``bench/load/run.py``) small: the same processes as ``make bench-load``
(nginx from Debian, ``relaypacs-hub serve`` replicas on one PostgreSQL database, a worker, dcmtk's
storescp as the archive), with a handful of agents for one minute.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.storescp import storescp_available

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()) or not storescp_available(),
        reason="needs nginx and dcmtk (make system-deps)",
    ),
]


def test_a_replica_killed_mid_run_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    del pg_url  # PostgreSQL must answer; the benchmark makes and drops its own database
    out = tmp_path / "result.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "load" / "run.py"),
            "--agents",
            "6",
            "--facilities",
            "3",
            "--minutes",
            "1",
            "--replicas",
            "2",
            "--kill",
            "--think",
            "2",
            "--no-bound",
            "--drain-minutes",
            "3",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())["runs"][0]
    assert result["killed_replica_at_s"] is not None
    # Studies were committed after the kill, through the replica that was left.
    assert result["studies_after_kill"] > 0, result
    archive = result["archive"]
    assert archive["expected"] > 0
    assert archive["lost"] == 0 and archive["duplicated"] == 0 and archive["unexpected"] == 0
    assert archive["received"] == archive["expected"] == archive["hub_instances"]
