"""After a real run (agent watching two facilities' folders, hub forwarding to an archive and,
for one facility, to a regional PACS that refuses every connection), Prometheus' view and the
dashboard's analytics tell what happened: 3 studies, 7 instances, 3 deliveries, one dead job.
The analytics page is photographed at phone and desktop sizes with that data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relaypacs_dev.generate import generate_study
from tests.e2e.helpers import archive_files, copy_tree
from tests.e2e.test_pwa import DESKTOP, PHONE, SHOTS
from tests.support.browser import chromium, ensure_pwa_built
from tests.support.orthanc import free_port
from tests.support.processes import AgentProcess, HubProcess, wait_for

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admin-" + "a" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "Analytics-admin-passw0rd"


def _samples(hub: HubProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(hub.url + "/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _total(samples: dict[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


@pytest.fixture
def run(tmp_path: Path) -> Iterator[HubProcess]:
    """The run: studies in, delivered or dead; the hub stays up for the checks."""
    ensure_pwa_built()
    archive = tmp_path / "archive"
    archive.mkdir()
    dest = tmp_path / "destinations.toml"
    dest.write_text(
        f'[[destinations]]\nname = "archive"\ntype = "folder"\npath = "{archive}"\n\n'
        f'[[destinations]]\nname = "regional-pacs"\ntype = "dicomweb"\n'
        f'url = "http://127.0.0.1:{free_port()}/dicom-web"\n'
    )
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'default_destinations = ["archive"]\n\n[[rules]]\nname = "east-also-regional"\n'
        'destinations = ["archive", "regional-pacs"]\n[rules.match]\nfacility = "east"\n'
    )
    hub = HubProcess(
        tmp_path,
        admin_token=ADMIN_TOKEN,
        destinations_file=str(dest),
        rules_file=str(rules),
        forward_max_attempts="1",
    )
    hub.start()
    try:  # the hub stops whatever happens, or it outlives the test
        north, east = tmp_path / "north-in", tmp_path / "east-in"
        north.mkdir()
        east.mkdir()
        folders = [
            {"path": str(north), "name": "north", "metadata": {"facility": "north"}},
            {"path": str(east), "name": "east", "service_level": "stat",
             "metadata": {"facility": "east"}},
        ]  # fmt: skip
        agent = AgentProcess(
            tmp_path,
            hub.url,
            watch_folders=json.dumps(folders),
            heartbeat_seconds="1",
            agent_name="two-clinics",
            min_free_bytes=str(64 * 1024 * 1024),
        )
        agent.start()
        try:
            ct = generate_study(tmp_path / "ct", instances=3, seed=501, rows=32, columns=32)
            mr = generate_study(
                tmp_path / "mr", modality="MR", instances=2, seed=502, rows=32, columns=32
            )
            er = generate_study(tmp_path / "er", instances=2, seed=503, rows=32, columns=32)
            copy_tree(tmp_path / "ct", north / "ct")
            copy_tree(tmp_path / "mr", north / "mr")
            copy_tree(tmp_path / "er", east / "er")
            (north / "notes.txt").write_text("not an image")  # quarantined by the agent
            wait_for(lambda: len(archive_files(archive)) == 7, 120, "7 instances in the archive")
            wait_for(
                lambda: (
                    _total(_samples(hub), "relaypacs_forward_jobs_finished_total", outcome="dead")
                    == 1
                ),
                60,
                "the regional PACS job to die",
            )
            assert {ct.study_instance_uid, mr.study_instance_uid, er.study_instance_uid}
            # The agent's heartbeat (every second here) reaches Prometheus through the hub: the
            # backlog drains to the one study whose regional copy died (the agent still counts it
            # as not delivered) and the quarantined text file is counted by its reason.
            wait_for(
                lambda: (
                    _total(_samples(hub), "relaypacs_agent_quarantined_files", reason="not_dicom")
                    == 1
                    and _total(
                        _samples(hub), "relaypacs_agent_backlog_studies", agent="two-clinics"
                    )
                    == 1
                ),
                30,
                "the agent's heartbeat to show one study waiting and one quarantined file",
            )
        finally:
            agent.terminate()
        yield hub
    finally:
        hub.terminate()


def test_scraped_counters_and_analytics_match_the_run(run: HubProcess) -> None:
    hub = run
    m = _samples(hub)
    assert _total(m, "relaypacs_studies_committed_total") == 3
    assert _total(m, "relaypacs_studies_committed_total", facility="north") == 2
    assert (
        _total(m, "relaypacs_studies_committed_total", facility="east", service_level="stat") == 1
    )
    assert _total(m, "relaypacs_instances_received_total") == 7
    assert _total(m, "relaypacs_forward_jobs_finished_total", outcome="delivered") == 3
    assert _total(m, "relaypacs_forward_jobs_finished_total", outcome="dead") == 1
    assert _total(m, "relaypacs_forward_jobs", destination="regional-pacs", state="dead") == 1
    # One observation per destination that confirmed a study: the three archive jobs.
    assert _total(m, "relaypacs_time_to_pacs_seconds_count") == 3
    # The agent as the hub exports it: one agent, its version, its disk and reserve.
    info = [lab for (n, lab), _ in m.items() if n == "relaypacs_agent_info"]
    assert len(info) == 1 and dict(info[0])["agent"] == "two-clinics"
    assert dict(info[0])["version"]
    assert _total(m, "relaypacs_agent_disk_reserve_bytes") == 64 * 1024 * 1024
    assert _total(m, "relaypacs_agent_disk_free_bytes") > 64 * 1024 * 1024
    assert _total(m, "relaypacs_agent_backlog_studies") == 1
    assert _total(m, "relaypacs_agent_oldest_waiting_seconds") > 0

    a = httpx.get(hub.url + "/api/v1/analytics", headers=ADMIN, timeout=10).json()
    assert (a["studies"], a["instances"], a["delivered"], a["failed"]) == (3, 7, 2, 1)
    assert {m["modality"]: m["studies"] for m in a["modalities"]} == {"CT": 2, "MR": 1}
    facilities = {f["facility"]: f for f in a["facilities"]}
    assert facilities["north"]["success_rate"] == 1.0
    assert facilities["east"]["failed"] == 1
    assert a["time_to_pacs"]["routine"]["n"] == 2

    r = httpx.post(
        hub.url + "/api/v1/users",
        headers=ADMIN,
        json={"username": "ops", "password": PASSWORD, "role": "admin", "facilities": []},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    with chromium() as browser:
        for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
            context = browser.new_context(viewport=viewport, accept_downloads=True)
            page = context.new_page()
            page.goto(hub.url + "/dashboard/")
            page.get_by_label("Username").fill("ops")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_test_id("dash-me").wait_for()
            page.get_by_test_id("dash-tab-analytics").click()
            page.get_by_test_id("dash-volume-chart").locator("canvas").wait_for()
            assert page.get_by_test_id("dash-an-studies").inner_text().split("\n")[1] == "3"
            assert "67%" in page.get_by_test_id("dash-an-success").inner_text()
            rows = page.get_by_test_id("dash-an-facility")
            assert rows.count() == 2
            mix = page.get_by_test_id("dash-modality-mix").inner_text()
            assert "CT" in mix and "MR" in mix
            if name == "phone":
                assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
                with page.expect_download() as got:
                    page.get_by_role("button", name="Download CSV").click()
                csv_path = Path(got.value.path())
                lines = csv_path.read_text().splitlines()
                assert lines[0].startswith("study_instance_uid,received_at,facility")
                assert len(lines) == 4
                page.get_by_text("Saved relaypacs-studies-").wait_for()
            page.screenshot(path=str(SHOTS / f"{name}-dashboard-analytics.png"), full_page=True)
            context.close()
