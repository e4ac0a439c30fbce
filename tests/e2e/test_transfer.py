"""Resumable transfer through real processes: kills on either side, and nothing sent twice."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from relaypacs_dev.generate import generate_study
from tests.e2e.helpers import archive_files, copy_tree
from tests.support.orthanc import free_port
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = pytest.mark.integration


def _segments(agent: AgentProcess) -> list[dict[str, Any]]:
    db = agent.data_dir / "agent.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM segments ORDER BY created_at")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _mid_segment(agent: AgentProcess) -> dict[str, Any] | None:
    for s in _segments(agent):
        if s["state"] == "uploading" and 0 < s["offset"] < s["length"]:
            return s
    return None


def _upload_ids(agent: AgentProcess, segment_id: str) -> list[str]:
    """tus upload ids of a segment: its own, or those of its parallel parts."""
    conn = sqlite3.connect(f"file:{agent.data_dir / 'agent.db'}?mode=ro", uri=True, timeout=10)
    try:
        urls = [
            r[0]
            for r in conn.execute(
                "SELECT upload_url FROM segment_parts WHERE segment_id = ? "
                "UNION SELECT upload_url FROM segments WHERE id = ?",
                (segment_id, segment_id),
            )
            if r[0]
        ]
    finally:
        conn.close()
    return [u.rsplit("/", 1)[1] for u in urls]


def _patches(hub_log: str, upload_id: str) -> list[tuple[int, bool]]:
    pat = re.compile(rf"patch_received\s+bytes=(\d+) complete=(True|False) upload_id={upload_id}")
    return [(int(m.group(1)), m.group(2) == "True") for m in pat.finditer(hub_log)]


def _check_archive(archive: Path, study: Any) -> None:
    found = archive_files(archive)
    assert set(found) == set(study.sop_instance_uids)
    for f, sop in zip(study.files, study.sop_instance_uids, strict=True):
        assert found[sop].read_bytes() == f.read_bytes()


def test_agent_killed_mid_segment_resumes_from_the_hubs_offset(tmp_path: Path) -> None:
    study = generate_study(tmp_path / "source", instances=40, seed=610, rows=512, columns=512)
    archive = tmp_path / "archive"
    hub = HubProcess(
        tmp_path, destinations_file=str(folder_destinations(tmp_path / "d.toml", archive))
    )
    hub.start()
    # A slow uplink (2 Mbit/s cap) so that a segment takes seconds to cross; one stream, so the
    # segment is one tus upload whose offset the restarted agent must pick up.
    slow = {"bandwidth_limit_kbps": "2000", "parallel_streams": "1"}
    agent = AgentProcess(tmp_path, hub.url, **slow)
    agent.start()
    try:
        copy_tree(tmp_path / "source", agent.inbox)
        wait_for(lambda: _mid_segment(agent), 120, "a segment half uploaded", interval=0.1)
        # What a radiographer sees meanwhile: progress with a rate and an ETA.
        progress = agent.status()["studies"][0]["transfer"]
        assert 0 < progress["bytes_sent"] < progress["bytes_to_send"]
        assert 0 < progress["percent"] < 100
        assert progress["rate_bytes_per_s"] > 0 and progress["eta_seconds"] is not None
        seg = wait_for(lambda: _mid_segment(agent), 120, "a segment half uploaded", interval=0.05)
        agent.kill()
        killed_at = seg["offset"]
        agent = AgentProcess(tmp_path, hub.url, **slow)
        agent.start()
        wait_for(lambda: len(archive_files(archive)) == 40, 240, "the study in the archive")
        _check_archive(archive, study)
        resumed = re.findall(
            rf"segment_resumed\s+length=(\d+) offset=(\d+) segment_id={seg['id']}", agent.log()
        )
        assert resumed, "the restarted agent must resume the segment, not start it again"
        assert int(resumed[0][1]) >= killed_at > 0
        upload_id = seg["upload_url"].rsplit("/", 1)[1]
        patches = _patches(hub.log(), upload_id)
        received = sum(n for n, _ in patches)
        resent = received - seg["length"]
        largest = max(n for n, _ in patches)
        assert 0 <= resent <= largest, f"{resent} bytes sent again, more than one PATCH ({largest})"
    finally:
        if agent.alive():
            agent.terminate()
        hub.terminate()


def test_hub_killed_mid_upload_another_hub_process_finishes_it(tmp_path: Path, pg_url: str) -> None:
    study = generate_study(tmp_path / "source", instances=16, seed=620, rows=512, columns=512)
    archive = tmp_path / "archive"
    port = free_port()
    settings = {
        "database_url": pg_url,
        "destinations_file": str(folder_destinations(tmp_path / "d.toml", archive)),
    }
    first = HubProcess(tmp_path, port=port, **settings)
    first.start()
    agent = AgentProcess(tmp_path, first.url, bandwidth_limit_kbps="4000", retry_max_seconds="2")
    agent.start()
    second: HubProcess | None = None
    try:
        copy_tree(tmp_path / "source", agent.inbox)
        seg = wait_for(lambda: _mid_segment(agent), 120, "a segment half uploaded", interval=0.1)
        first.kill()
        upload_ids = _upload_ids(agent, seg["id"])
        # Another hub process on the same database and storage takes the traffic.
        second = HubProcess(tmp_path, port=port, **settings)
        second.log_path = tmp_path / "hub2.log"
        second.start()
        wait_for(lambda: len(archive_files(archive)) == 16, 240, "the study in the archive")
        _check_archive(archive, study)
        assert upload_ids
        assert any(_patches(second.log(), u) for u in upload_ids), (
            "the second hub must continue the uploads the first one started"
        )
    finally:
        agent.terminate()
        if second is not None:
            second.terminate()


def test_same_study_twice_sends_no_instance_bytes_again(tmp_path: Path) -> None:
    study = generate_study(tmp_path / "source", instances=8, seed=630, rows=256, columns=256)
    archive = tmp_path / "archive"
    hub = HubProcess(
        tmp_path, destinations_file=str(folder_destinations(tmp_path / "d.toml", archive))
    )
    hub.start()
    try:
        first = AgentProcess(tmp_path / "a1", hub.url)
        first.start()
        copy_tree(tmp_path / "source", first.inbox)
        wait_for(
            lambda: first.status()["totals"]["studies_by_state"].get("delivered") == 1,
            120,
            "first delivery",
        )
        first.terminate()
        uploads_before = hub.log().count("upload_created")
        assert uploads_before >= 1
        second = AgentProcess(tmp_path / "a2", hub.url)
        second.start()
        copy_tree(tmp_path / "source", second.inbox)
        wait_for(
            lambda: second.status()["totals"]["studies_by_state"].get("delivered") == 1,
            120,
            "second delivery (already held by the hub)",
        )
        second.terminate()
        assert _segments(second) == [], "no segment may be built for instances the hub holds"
        assert hub.log().count("upload_created") == uploads_before
        _check_archive(archive, study)
    finally:
        hub.terminate()


def _events(log: str, event: str) -> list[tuple[float, str]]:
    """(timestamp, line) of each structured event in a process log."""
    from datetime import datetime

    out = []
    for line in log.splitlines():
        if f" {event} " in line or line.rstrip().endswith(f" {event}"):
            stamp = line.split(" ", 1)[0].rstrip("Z")
            try:
                out.append((datetime.fromisoformat(stamp).timestamp(), line))
            except ValueError:
                continue
    return out


def test_stat_study_overtakes_a_routine_backlog_at_a_segment_boundary(tmp_path: Path) -> None:
    import json

    routine = generate_study(tmp_path / "routine", instances=60, seed=640, rows=512, columns=512)
    stat = generate_study(tmp_path / "stat", instances=3, seed=641, rows=512, columns=512)
    archive = tmp_path / "archive"
    hub = HubProcess(
        tmp_path, destinations_file=str(folder_destinations(tmp_path / "d.toml", archive))
    )
    hub.start()
    stat_inbox = tmp_path / "stat-inbox"
    stat_inbox.mkdir()
    agent = AgentProcess(
        tmp_path,
        hub.url,
        bandwidth_limit_kbps="8000",
        segment_max_bytes=str(4 * 1024 * 1024),
        watch_folders=json.dumps(
            [{"path": str(stat_inbox), "name": "er", "service_level": "stat"}]
        ),
    )
    agent.start()
    try:
        copy_tree(tmp_path / "routine", agent.inbox)
        wait_for(lambda: _mid_segment(agent), 120, "the routine backlog moving", interval=0.1)
        copy_tree(tmp_path / "stat", stat_inbox)
        stat_dir = archive / stat.study_instance_uid
        wait_for(
            lambda: len(list(stat_dir.glob("*/*.dcm"))) == 3 if stat_dir.exists() else False,
            120,
            "the STAT study in the archive",
        )
        routine_dir = archive / routine.study_instance_uid
        routine_done = len(list(routine_dir.glob("*/*.dcm"))) if routine_dir.exists() else 0
        assert routine_done < 60, "the STAT study must arrive while the routine backlog waits"
        log = agent.log()
        stat_built = [
            t for t, line in _events(log, "segment_built") if stat.study_instance_uid in line
        ]
        conn = sqlite3.connect(f"file:{agent.data_dir / 'agent.db'}?mode=ro", uri=True)
        (last_instance_at,) = conn.execute(
            "SELECT last_instance_at FROM studies WHERE study_instance_uid = ?",
            (stat.study_instance_uid,),
        ).fetchone()
        conn.close()
        stat_due = last_instance_at + 2.0  # the quiet period of the test agent
        routine_between = [
            t
            for t, line in _events(log, "segment_uploaded")
            if routine.study_instance_uid in line and stat_due <= t <= stat_built[0]
        ]
        assert len(routine_between) <= 1, "STAT must start within one routine segment"
        wait_for(lambda: len(list(routine_dir.glob("*/*.dcm"))) == 60, 240, "the routine study too")
    finally:
        agent.terminate()
        hub.terminate()
