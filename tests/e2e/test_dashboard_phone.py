"""The dashboard's Studies and Dead jobs tabs on a 390 px phone, with real data: a study
delivered to one destination and a dead job at another (an archive that refuses connections).
Nothing scrolls sideways, each row's facts are readable, and Retry is reachable."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs_dev.generate import generate_study
from tests.e2e.test_pwa import DESKTOP, PHONE, SHOTS
from tests.support.browser import chromium, ensure_pwa_built
from tests.support.hubapi import send_study
from tests.support.orthanc import free_port
from tests.support.processes import HubProcess, wait_for

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admin-" + "p" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "Dashboard-phone-passw0rd"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    ensure_pwa_built()
    archive = tmp_path / "archive"
    archive.mkdir()
    dead_port = free_port()  # nothing listens here: every attempt is refused
    dest = tmp_path / "destinations.toml"
    dest.write_text(
        f'[[destinations]]\nname = "archive"\ntype = "folder"\npath = "{archive}"\n\n'
        f'[[destinations]]\nname = "regional-pacs"\ntype = "dicomweb"\n'
        f'url = "http://127.0.0.1:{dead_port}/dicom-web"\n'
    )
    proc = HubProcess(
        tmp_path,
        admin_token=ADMIN_TOKEN,
        destinations_file=str(dest),
        forward_max_attempts="1",
    )
    proc.start()
    yield proc
    proc.terminate()


def _send_study(hub: HubProcess, tmp_path: Path) -> str:
    """One study as an agent sends it: instances, then the commit naming them."""
    return send_study(
        hub.url,
        generate_study(tmp_path / "study", instances=2, seed=390, rows=32, columns=32),
        service_level="stat",
        facility="north-clinic",
        received_at=datetime.now(UTC),
        clinical_history="Fall from a ladder, suspected wrist fracture, pain on the radial side",
    )


def _admin(hub: HubProcess) -> None:
    """The admin who signs in to the dashboard."""
    r = httpx.post(
        hub.url + "/api/v1/users",
        headers=ADMIN,
        json={"username": "ada", "password": PASSWORD, "role": "admin", "facilities": []},
        timeout=10,
    )
    assert r.status_code == 201, r.text


def _no_sideways_scroll(page: Any) -> None:
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    # Every element of the tab's content lies inside the screen (not in a sideways scroller).
    beyond = page.evaluate(
        """() => [...document.querySelectorAll('main section *')]
            .filter(e => !e.closest('thead'))  // visually hidden on phones (screen readers)
            .filter(e => e.getBoundingClientRect().right > innerWidth + 0.5)
            .map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)"""
    )
    assert beyond == [], beyond[:5]


def test_studies_and_dead_jobs_fit_a_phone(hub: HubProcess, tmp_path: Path) -> None:
    _admin(hub)
    uid = _send_study(hub, tmp_path)

    def dead_jobs() -> list[dict[str, Any]]:
        r = httpx.get(hub.url + "/api/v1/jobs", params={"state": "dead"}, headers=ADMIN)
        return list(r.json()["jobs"]) if r.status_code == 200 else []

    wait_for(lambda: len(dead_jobs()) == 1, 60, "the regional PACS job to die")

    with chromium() as browser:
        for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
            context = browser.new_context(viewport=viewport)
            page = context.new_page()
            page.goto(hub.url + "/dashboard/")
            page.get_by_label("Username").fill("ada")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_test_id("dash-me").wait_for()

            if name == "phone":
                # Every view's tab is on screen (the bar wraps), none hidden off to the side.
                tabs = page.get_by_role("tab")
                assert tabs.count() == 7
                for i in range(tabs.count()):
                    box = tabs.nth(i).bounding_box()
                    assert box is not None and box["x"] >= 0
                    assert box["x"] + box["width"] <= PHONE["width"], tabs.nth(i).inner_text()
            page.get_by_test_id("dash-tab-studies").click()
            row = page.get_by_test_id("dash-study-row").first
            row.wait_for()
            text = row.inner_text()
            assert uid[:20] in text and "north-clinic" in text and "STAT" in text
            assert "regional-pacs" in text and "archive" in text
            if name == "phone":
                _no_sideways_scroll(page)
                # Stacked: each fact is labelled, as a card, not a column far to the right.
                labels = row.evaluate(
                    "r => [...r.cells].map(c => getComputedStyle(c, '::before').content)"
                )
                assert '"Facility"' in labels and '"Destinations"' in labels, labels
            page.screenshot(path=str(SHOTS / f"{name}-dashboard-studies.png"), full_page=True)

            page.get_by_test_id("dash-tab-dead").click()
            job = page.get_by_test_id("dash-dead-job").first
            job.wait_for()
            assert "regional-pacs" in job.inner_text()
            retry = page.get_by_role("button", name=f"Retry job {dead_jobs()[0]['id']}")
            assert retry.is_visible()
            if name == "phone":
                _no_sideways_scroll(page)
                box = retry.bounding_box()
                assert box is not None and box["x"] + box["width"] <= PHONE["width"]
            page.screenshot(path=str(SHOTS / f"{name}-dashboard-dead-jobs.png"), full_page=True)
            context.close()


def test_the_report_column_and_the_waiting_count(hub: HubProcess, tmp_path: Path) -> None:
    """A delivered study waits for its report: the Overview counts it, its row says Waiting;
    once the radiologist's final report is in, the row says Final with the time it took, the
    Report filter finds it, and nothing waits any more."""
    _admin(hub)
    uid = _send_study(hub, tmp_path)

    def waiting() -> int:
        r = httpx.get(hub.url + "/api/v1/stats", headers=ADMIN, timeout=10)
        return int(r.json()["waiting_for_report"]) if r.status_code == 200 else -1

    wait_for(lambda: waiting() == 1, 60, "the delivered study to wait for its report")
    with chromium() as browser:
        page = browser.new_context(viewport=DESKTOP).new_page()
        page.goto(hub.url + "/dashboard/")
        page.get_by_label("Username").fill("ada")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        card = page.get_by_test_id("dash-waiting-report")
        card.wait_for()
        lines = card.inner_text().splitlines()
        assert lines[:2] == ["Waiting for a report", "1"] and lines[2].startswith("oldest "), lines
        assert page.get_by_test_id("dash-time-to-report").inner_text().splitlines()[1] == "—"
        page.get_by_test_id("dash-tab-studies").click()
        cell = page.get_by_test_id("dash-report").first
        cell.wait_for()
        assert cell.get_attribute("data-report") == "waiting"
        assert cell.inner_text().startswith("Waiting")
        assert "delivered" in cell.inner_text()

        r = httpx.post(
            f"{hub.url}/api/v1/studies/{uid}/reports",
            headers=ADMIN,
            json={"text": "No fracture. Soft tissue swelling.", "status": "final"},
            timeout=10,
        )
        assert r.status_code in (200, 201), r.text
        page.get_by_label("Report").select_option("final")
        page.locator('[data-testid="dash-report"][data-report="final"]').wait_for()
        rows = page.get_by_test_id("dash-study-row")
        assert rows.count() == 1 and uid[:20] in rows.first.inner_text()
        final = rows.first.get_by_test_id("dash-report").inner_text()
        assert final.startswith("Final") and "\nin " in final, final
        page.get_by_label("Report").select_option("waiting")
        page.get_by_text("No studies.").wait_for()

        page.get_by_test_id("dash-tab-overview").click()
        page.get_by_test_id("dash-waiting-report").wait_for()
        assert page.get_by_test_id("dash-waiting-report").inner_text().splitlines() == [
            "Waiting for a report",
            "0",
        ]
        median, p95 = (
            page.get_by_test_id("dash-time-to-report").inner_text().splitlines()[1].split(" / ")
        )
        assert median == p95 and median != "—"  # one report: the median is the 95th percentile
        page.screenshot(path=str(SHOTS / "desktop-dashboard-reports.png"), full_page=True)
