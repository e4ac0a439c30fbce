"""Delivery over a bad link: the agent in one network namespace, the hub in another.

The link between them is shaped by relaypacs_dev.wan (tc tbf rate, nftables random loss,
scheduled outages). Byte-identical arrival in the hub's archive is the only success.
"""

from __future__ import annotations

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
