"""End to end through real processes: folder in at the agent, archive out at the hub."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    Drop,
    archive_files,
    check_archive_layout,
    copy_tree,
    make_three_studies,
)
from tests.support.orthanc import OrthancServer, free_port, orthanc_available
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _drop_bad_files(inbox: Path, drop: Drop) -> None:
    (inbox / "bad").mkdir(parents=True, exist_ok=True)
    (inbox / "bad" / "referral-letter.txt").write_text("Please see patient.\n")
    # A DICOM file cut short in its pixel data, as an interrupted copy leaves it.
    good = drop.files[0].read_bytes()
    (inbox / "bad" / "interrupted-copy.dcm").write_bytes(good[: len(good) - 5000])


def test_make_demo_delivers_three_studies_and_quarantines_bad_files(tmp_path: Path) -> None:
    """`make demo`'s script, driven as a person would: drop files, watch the archive, Ctrl-C."""
    drop = make_three_studies(tmp_path / "source")
    assert drop.instance_count >= 100
    demo_dir = tmp_path / "demo"
    port = free_port()
    env = {
        **os.environ,
        "DEMO_DIR": str(demo_dir),
        "DEMO_PORT": str(port),
        "DEMO_DICOM_PORT": str(free_port()),
        "DEMO_WEB_PORT": str(free_port()),
        "RELAYPACS_AGENT_QUIET_PERIOD_SECONDS": "2",
        "RELAYPACS_AGENT_SETTLE_SECONDS": "0.5",
        "RELAYPACS_AGENT_STATUS_POLL_SECONDS": "1",
    }
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "demo.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        inbox = demo_dir / "inbox"
        wait_for(
            lambda: "drop DICOM files into" in (tmp_path / "demo.log").read_text(),
            90,
            "the demo to say where to drop files",
        )
        dropped = copy_tree(tmp_path / "source", inbox)
        _drop_bad_files(inbox, drop)
        dropped += 2
        archive = demo_dir / "archive"
        wait_for(
            lambda: len(archive_files(archive)) == drop.instance_count,
            120,
            "every instance in the archive",
        )
        check_archive_layout(archive, drop)
        quarantine = demo_dir / "agent" / "quarantine"
        sidecars = wait_for(
            lambda: sorted(quarantine.glob("*/*.reason.json")) if quarantine.exists() else [],
            30,
            "two quarantined files",
        )
        reasons = {p.name.split("_", 1)[1]: p.read_text() for p in sidecars}
        assert set(reasons) == {
            "referral-letter.txt.reason.json",
            "interrupted-copy.dcm.reason.json",
        }
        assert '"not_dicom"' in reasons["referral-letter.txt.reason.json"]
        assert '"truncated"' in reasons["interrupted-copy.dcm.reason.json"]
        # The quarantined bytes are kept, not deleted.
        kept = [p for p in quarantine.glob("*/*") if not p.name.endswith(".reason.json")]
        assert len(kept) == 2
        # Counts add up: every dropped file is delivered or quarantined, the inbox is empty.
        assert dropped == len(archive_files(archive)) + len(kept)
        assert [p for p in inbox.rglob("*") if p.is_file()] == []
        # Prometheus from the loopback: the studies counted and time to PACS as a histogram.
        from prometheus_client.parser import text_string_to_metric_families

        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert metrics.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        committed = sum(s.value for s in families["relaypacs_studies_committed"].samples
                        if s.name == "relaypacs_studies_committed_total")  # fmt: skip
        assert committed >= 3
        assert families["relaypacs_time_to_pacs_seconds"].type == "histogram"
        assert any(
            s.name == "relaypacs_time_to_pacs_seconds_count" and s.value >= 3
            for s in families["relaypacs_time_to_pacs_seconds"].samples
        )
        # The status command the demo printed works as printed, in the demo's own environment
        # (uv by its full path when it is not on PATH).
        printed = (tmp_path / "demo.log").read_text()
        line = next(x for x in printed.splitlines() if "see what the agent holds:" in x)
        command = line.split("see what the agent holds:", 1)[1].strip()
        shown = subprocess.run(
            ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert shown.returncode == 0, shown.stderr
        assert "quarantined" in shown.stdout and "instance(s)" in shown.stdout

        def agent_totals() -> dict[str, Any]:
            out = subprocess.run(
                [sys.executable, "-m", "relaypacs_agent.cli", "status", "--json"],
                env={**env, "RELAYPACS_AGENT_DATA_DIR": str(demo_dir / "agent")},
                capture_output=True,
                check=True,
            )
            totals: dict[str, Any] = json.loads(out.stdout)["totals"]
            return totals

        totals = agent_totals()
        assert totals["instances"] == drop.instance_count
        assert totals["quarantined"] == 2
        assert totals["studies"] == 3
        wait_for(
            lambda: agent_totals()["studies_by_state"].get("delivered") == 3,
            30,
            "the agent to learn that all three studies were delivered",
        )
        # The PWA and the dashboard answer, and the demo account it printed signs in at the
        # agent (checked against the verifiers the agent fetched from the hub).
        login = (demo_dir / "demo-login.txt").read_text()
        password = login.split("password: ", 1)[1].strip()
        assert password in (tmp_path / "demo.log").read_text()
        web = f"http://127.0.0.1:{env['DEMO_WEB_PORT']}"
        built = (REPO / "pwa" / "dist" / "index.html").is_file()
        assert httpx.get(web + "/").status_code == (200 if built else 503)  # 503: no `make pwa`

        def sign_in() -> httpx.Response | None:
            r = httpx.post(
                web + "/api/v1/auth/login", json={"username": "demo", "password": password}
            )
            return r if r.status_code == 200 else None

        r = wait_for(sign_in, 30, "the demo account to sign in at the agent")
        assert r.json()["role"] == "admin"
        dashboard = httpx.get(f"http://127.0.0.1:{port}/dashboard/")
        assert dashboard.status_code == (200 if built else 503)

        # The report loop's outside contract: a report posted at the hub with the demo
        # account's hub token is readable at the agent's LAN app within 90 s; 404 before.
        lan = {"Authorization": f"Bearer {r.json()['token']}"}
        study_uid = drop.studies[0].study_instance_uid
        report_url = f"{web}/api/v1/studies/{study_uid}/report"
        before = httpx.get(report_url, headers=lan)
        assert before.status_code == 404, before.text
        assert before.json()["code"] == "no_report"
        hub_login = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/auth/login",
            json={"username": "demo", "password": password},
        )
        assert hub_login.status_code == 200, hub_login.text
        text = "CT head: no acute intracranial abnormality."
        posted = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/studies/{study_uid}/reports",
            json={"text": text, "status": "final"},
            headers={"Authorization": f"Bearer {hub_login.json()['access_token']}"},
        )
        assert posted.status_code in (200, 201), posted.text
        t0 = time.monotonic()
        report = wait_for(
            lambda: (lambda g: g.json() if g.status_code == 200 else None)(
                httpx.get(report_url, headers=lan)
            ),
            90,
            "the report at the agent's LAN app",
            interval=0.5,
        )
        assert report["status"] == "final"
        assert report["text"] == text
        assert time.monotonic() - t0 < 90
    finally:
        # Ctrl-C, as a person would: both processes stop cleanly.
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
        try:
            code = demo.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            raise
        finally:
            log.close()
    text = (tmp_path / "demo.log").read_text()
    assert code == 0, text[-3000:]
    assert "stopped." in text
    assert "agent_stopped" in text and "hub_stopped" in text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_postgresql_hub_delivers_to_orthanc(tmp_path: Path, pg_url: str) -> None:
    """Hub on PostgreSQL forwarding by STOW-RS to a real Orthanc; checked by QIDO-RS and bytes."""
    if not orthanc_available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (make system-deps)")
    drop = make_three_studies(tmp_path / "source", seed=200)
    with OrthancServer() as orthanc:
        dest = tmp_path / "destinations.toml"
        dest.write_text(
            f'[[destinations]]\nname = "orthanc"\ntype = "dicomweb"\n'
            f'url = "{orthanc.dicomweb_url}"\n'
            "max_batch_instances = 16\n"
        )
        hub = HubProcess(tmp_path, database_url=pg_url, destinations_file=str(dest))
        hub.start()
        agent = AgentProcess(tmp_path, hub.url)
        agent.start()
        try:
            copy_tree(tmp_path / "source", agent.inbox)
            wait_for(
                lambda: agent.status()["totals"]["studies_by_state"].get("delivered") == 3,
                180,
                "three studies delivered to Orthanc",
                interval=1,
            )
            for study in drop.studies:
                r = httpx.get(
                    f"{orthanc.dicomweb_url}/studies/{study.study_instance_uid}/instances"
                )
                assert r.status_code == 200
                assert len(r.json()) == len(study.sop_instance_uids)
            assert orthanc.instance_count() == drop.instance_count
            for sop, original in drop.originals.items():
                assert orthanc.fetch_instance_file(sop) == original
        finally:
            assert agent.terminate() == 0, agent.log()[-3000:]
            assert hub.terminate() == 0, hub.log()[-3000:]
    # The hub recorded the studies in PostgreSQL, not in a stray SQLite file.
    assert not (tmp_path / "hub" / "hub.db").exists()


def test_hub_down_while_files_are_dropped(tmp_path: Path) -> None:
    """Files dropped while the hub is unreachable wait at the agent and go once it is back."""
    drop = make_three_studies(tmp_path / "source", seed=300)
    archive = tmp_path / "archive"
    port = free_port()
    agent = AgentProcess(tmp_path, f"http://127.0.0.1:{port}")
    agent.start()
    try:
        copy_tree(tmp_path / "source", agent.inbox)
        # The agent takes everything in and keeps retrying the unreachable hub.
        wait_for(
            lambda: agent.status()["totals"]["instances"] == drop.instance_count,
            60,
            "the agent to hold every instance",
        )
        wait_for(
            lambda: any(
                s["last_error"] and "unreachable" in s["last_error"]
                for s in agent.status()["studies"]
            ),
            30,
            "the agent to report the hub unreachable",
        )
        assert not archive.exists()
        time.sleep(3)
        hub = HubProcess(
            tmp_path,
            port=port,
            destinations_file=str(folder_destinations(tmp_path / "d.toml", archive)),
        )
        hub.start()
        try:
            wait_for(
                lambda: agent.status()["totals"]["studies_by_state"].get("delivered") == 3,
                90,
                "all studies delivered after the hub came back",
                interval=1,
            )
            check_archive_layout(archive, drop)
        finally:
            assert hub.terminate() == 0
    finally:
        assert agent.terminate() == 0, agent.log()[-3000:]


def test_agent_sigkilled_mid_drop_delivers_every_file_exactly_once(tmp_path: Path) -> None:
    """SIGKILL the agent while 100 files are arriving; after a restart each is delivered once."""
    from relaypacs_dev.generate import generate_study

    study = generate_study(tmp_path / "source", instances=100, seed=400, rows=256, columns=256)
    originals = {
        sop: f.read_bytes() for f, sop in zip(study.files, study.sop_instance_uids, strict=True)
    }
    archive = tmp_path / "archive"
    hub = HubProcess(
        tmp_path, destinations_file=str(folder_destinations(tmp_path / "d.toml", archive))
    )
    hub.start()
    agent = AgentProcess(tmp_path, hub.url, settle_seconds="0.2", scan_interval_seconds="0.1")
    agent.start()
    try:
        # Files arrive one by one, as from a slow copy; the agent dies in the middle of them.
        for i, f in enumerate(study.files):
            (agent.inbox / f.name).write_bytes(f.read_bytes())
            time.sleep(0.02)
            if i == 59:
                wait_for(
                    lambda: len(list(agent.inbox.iterdir())) < 55,
                    30,
                    "the agent to have taken some files in",
                    interval=0.02,
                )
                agent.kill()
        remaining = len(list(agent.inbox.iterdir()))
        assert 0 < remaining < 100, "the kill must land while files are still in the inbox"
        agent = AgentProcess(tmp_path, hub.url)
        agent.start()
        wait_for(
            lambda: agent.status()["totals"]["studies_by_state"].get("delivered") == 1,
            120,
            "the study delivered after the restart",
            interval=1,
        )
        status = agent.status()["totals"]
        assert status["instances"] == 100
        assert status["quarantined"] == 0
        assert status["duplicates"] == 0
        found = archive_files(archive)
        assert set(found) == set(originals)
        for sop, path in found.items():
            assert path.read_bytes() == originals[sop]
        # No stray or half-written files anywhere in the archive or the spool.
        assert sorted(p.name for p in archive.rglob(".*")) == []
        spool = tmp_path / "agent" / "spool"
        assert len([p for p in spool.rglob("*.dcm")]) == 100
        assert [p for p in spool.rglob(".*")] == []
        # Stored once each: one by one (instance_stored) or a segment's at once (stored=N).
        text = hub.log()
        stored = text.count("instance_stored") + sum(
            int(n) for n in re.findall(r"segment_processed\b.*?\bstored=(\d+)", text)
        )
        assert stored == 100, f"the hub stored {stored} instances for 100 files"
    finally:
        if agent.alive():
            assert agent.terminate() == 0
        assert hub.terminate() == 0
