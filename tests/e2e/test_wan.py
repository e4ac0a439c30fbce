"""Delivery over a bad link: the agent in one network namespace, the hub in another.

The link between them is shaped by relaypacs_dev.wan (tc tbf rate, nftables random loss,
scheduled outages). Byte-identical arrival in the hub's archive is the only success.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from relaypacs_dev.generate import generate_study
from relaypacs_dev.wan import LinkProfile, WanLink, wan_available
from tests.e2e.helpers import archive_files, copy_tree
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.wan]


def _deliver_over(
    tmp_path: Path, profile: LinkProfile, *, instances: int, rows: int, timeout: float
) -> tuple[float, WanLink, AgentProcess]:
    if (reason := wan_available()) is not None:
        pytest.skip(reason)
    study = generate_study(
        tmp_path / "source", instances=instances, seed=900, rows=rows, columns=rows
    )
    originals = {
        sop: f.read_bytes() for f, sop in zip(study.files, study.sop_instance_uids, strict=True)
    }
    archive = tmp_path / "archive"
    with WanLink(profile) as link:
        hub = HubProcess(
            tmp_path,
            host=link.hub_ip,
            prefix=link.wrap("hub", []),
            probe_prefix=link.wrap("edge", []),
            destinations_file=str(folder_destinations(tmp_path / "d.toml", archive)),
        )
        hub.start(timeout=120)
        agent = AgentProcess(
            tmp_path,
            hub.url,
            prefix=link.wrap("edge", []),
            retry_max_seconds="2",
            allow_insecure_http="true",  # plain HTTP over the emulated private WAN link
        )
        agent.start()
        try:
            copy_tree(tmp_path / "source", agent.inbox)
            wait_for(
                lambda: agent.status()["totals"]["instances"] == instances,
                120,
                "the agent to take every file in",
            )
            started = time.monotonic()
            wait_for(
                lambda: len(archive_files(archive)) == instances,
                timeout,
                f"the study to arrive over {profile.describe()}",
                interval=1,
            )
            elapsed = time.monotonic() - started
        finally:
            agent.terminate()
            hub.terminate()
    found = archive_files(archive)
    assert set(found) == set(originals)
    for sop, path in found.items():
        assert path.read_bytes() == originals[sop], f"{sop} differs"
    return elapsed, link, agent


def test_100mb_over_lossy_link_with_outages(tmp_path: Path) -> None:
    profile = LinkProfile(rate_mbit=20, loss_pct=5, outage_every_s=30, outage_for_s=8)
    elapsed, link, _ = _deliver_over(tmp_path, profile, instances=200, rows=512, timeout=600)
    assert link.outages >= 1, "the test must have crossed at least one outage"
    print(f"100 MB over {profile.describe()}: {elapsed:.0f}s, {link.outages} outage(s)")


def test_half_the_packets_lost(tmp_path: Path) -> None:
    """Half of the packets carrying the upload are dropped (the edge-to-hub direction)."""
    profile = LinkProfile(rate_mbit=20, loss_pct=50, loss_direction="up")
    elapsed, _, _ = _deliver_over(tmp_path, profile, instances=6, rows=512, timeout=600)
    assert elapsed < 600
    print(f"3 MB over {profile.describe()}: {elapsed:.0f}s")


def test_half_the_packets_lost_both_ways(tmp_path: Path) -> None:
    """Half of the packets are dropped at either end: data and ACKs, requests and answers. A small
    study still arrives byte-identical, once, within ten minutes."""
    profile = LinkProfile(rate_mbit=20, loss_pct=50, loss_direction="both")
    elapsed, _, _ = _deliver_over(tmp_path, profile, instances=4, rows=256, timeout=600)
    # Nothing duplicated at the archive: exactly one file per instance and no leftovers, and one
    # finished forward job (one destination).
    files = [p for p in (tmp_path / "archive").rglob("*") if p.is_file()]
    assert len(files) == 4, files
    hub_db = sqlite3.connect(f"file:{tmp_path / 'hub' / 'hub.db'}?mode=ro", uri=True)
    jobs = hub_db.execute("SELECT state FROM forward_jobs").fetchall()
    hub_db.close()
    assert jobs == [("done",)]
    print(f"4 instances over {profile.describe()}: {elapsed:.0f}s")


def test_stat_goes_first_over_a_lossy_link(tmp_path: Path) -> None:
    """A STAT study dropped behind a routine backlog on a link losing 30% both ways arrives while
    the routine study is still on its way; both arrive byte-identical."""
    if (reason := wan_available()) is not None:
        pytest.skip(reason)
    routine = generate_study(tmp_path / "routine", instances=60, seed=910, rows=512, columns=512)
    stat = generate_study(tmp_path / "stat", instances=2, seed=911, rows=256, columns=256)
    archive = tmp_path / "archive"
    profile = LinkProfile(rate_mbit=20, loss_pct=30, loss_direction="both")
    with WanLink(profile) as link:
        hub = HubProcess(
            tmp_path,
            host=link.hub_ip,
            prefix=link.wrap("hub", []),
            probe_prefix=link.wrap("edge", []),
            destinations_file=str(folder_destinations(tmp_path / "d.toml", archive)),
        )
        hub.start(timeout=120)
        stat_inbox = tmp_path / "er-inbox"
        stat_inbox.mkdir()
        agent = AgentProcess(
            tmp_path,
            hub.url,
            prefix=link.wrap("edge", []),
            retry_max_seconds="2",
            allow_insecure_http="true",
            watch_folders=json.dumps(
                [{"path": str(stat_inbox), "name": "er", "service_level": "stat"}]
            ),
        )
        agent.start()
        try:
            copy_tree(tmp_path / "routine", agent.inbox)
            wait_for(lambda: "segment_uploaded" in agent.log(), 300, "the routine backlog moving")
            copy_tree(tmp_path / "stat", stat_inbox)
            stat_dir = archive / stat.study_instance_uid
            wait_for(
                lambda: stat_dir.exists() and len(list(stat_dir.glob("*/*.dcm"))) == 2,
                300,
                "the STAT study in the archive",
                interval=0.5,
            )
            routine_dir = archive / routine.study_instance_uid
            routine_done = len(list(routine_dir.glob("*/*.dcm"))) if routine_dir.exists() else 0
            assert routine_done < 60, "the STAT study must arrive while the routine study waits"
            wait_for(
                lambda: len(list(routine_dir.glob("*/*.dcm"))) == 60,
                600,
                "the routine study too",
                interval=1,
            )
        finally:
            agent.terminate()
            hub.terminate()
    found = archive_files(archive)
    for study in (routine, stat):
        for f, sop in zip(study.files, study.sop_instance_uids, strict=True):
            assert found[sop].read_bytes() == f.read_bytes(), f"{sop} differs"
