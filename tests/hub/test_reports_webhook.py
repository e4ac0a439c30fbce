"""The archive tells the hub: Orthanc, running the project's Python-plugin script
(``deploy/orthanc/relaypacs_report_hook.py`` under Debian's ``orthanc-python``), announces a
report stored into it; the hub, whose next poll is an hour away and whose changes feed is off,
shows the final report within seconds. The webhook route takes only its token (or the admin
token) and answers ``watched: false`` for what it does not watch."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs_dev.generate import generate_study
from relaypacs_dev.reports import dose_sr, text_sr
from tests.hub.conftest import write_destinations
from tests.support.hubapi import send_study
from tests.support.orthanc import PYTHON_PLUGIN, OrthancServer, free_port, orthanc_available
from tests.support.processes import HubProcess, wait_for
from tests.support.reports import stow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "deploy/orthanc/relaypacs_report_hook.py"
TOKEN = "webhook-" + "w" * 40
ADMIN = {"Authorization": "Bearer admin-" + "a" * 40}


@pytest.fixture
def orthanc_and_hub(tmp_path: Path) -> Iterator[tuple[OrthancServer, HubProcess]]:
    if not (orthanc_available() and PYTHON_PLUGIN.exists()):
        why = "needs Orthanc with its DICOMweb and Python plugins (make system-deps)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    hub_port = free_port()
    token_file = tmp_path / "webhook-token"
    token_file.write_text(TOKEN + "\n")
    orthanc = OrthancServer(
        python_script=HOOK,
        extra_config={
            "RelayPACS": {"HubUrl": f"http://127.0.0.1:{hub_port}", "TokenFile": str(token_file)}
        },
    )
    orthanc.start()
    dests = write_destinations(
        tmp_path / "d.toml",
        {"name": "orthanc", "type": "dicomweb", "profile": "orthanc", "url": orthanc.dicomweb_url},
    )
    hub = HubProcess(
        tmp_path,
        port=hub_port,
        destinations_file=str(dests),
        admin_token=ADMIN["Authorization"].removeprefix("Bearer "),
        report_webhook_token=TOKEN,
        # The scheduled poll is an hour away and the changes feed is off: only the hook can
        # bring the report in time.
        report_poll_seconds="3600",
        report_poll_stat_seconds="3600",
        report_orthanc_changes="false",
    )
    hub.start()
    try:
        yield orthanc, hub
    finally:
        hub.terminate()
        orthanc.stop()


def _send(hub: HubProcess, tmp_path: Path) -> str:
    return send_study(
        hub.url, generate_study(tmp_path / "ct", instances=2, rows=32, columns=32, seed=47)
    )


def _polls(tmp_path: Path, uid: str) -> int:
    with sqlite3.connect(tmp_path / "hub" / "hub.db") as db:
        row = db.execute(
            "SELECT polls FROM study_reports WHERE study_instance_uid = ?", (uid,)
        ).fetchone()
    return int(row[0]) if row else 0


def _reports(hub: HubProcess, uid: str) -> dict[str, Any]:
    r = httpx.get(f"{hub.url}/api/v1/studies/{uid}/reports", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_orthanc_announces_a_report_and_the_hub_fetches_it_at_once(
    orthanc_and_hub: tuple[OrthancServer, HubProcess], tmp_path: Path
) -> None:
    orthanc, hub = orthanc_and_hub
    assert "RelayPACS report hook: new reports are announced" in orthanc.log_tail(200)
    uid = _send(hub, tmp_path)
    wait_for(lambda: orthanc.instance_count() == 2, 60, "the study in Orthanc")
    # Watched, and its first poll (at delivery) done: the next one is an hour away.
    wait_for(lambda: _polls(tmp_path, uid) >= 1, 60, "the hub to watch the study")
    assert _reports(hub, uid)["report_status"] == "none"

    # A dose SR is not a report: the hook does not even call; nothing changes at the hub.
    stow(orthanc.dicomweb_url, dose_sr(uid))
    stow(orthanc.dicomweb_url, text_sr(uid, findings="No acute intracranial abnormality."))
    # Within 20 s, where the next scheduled poll is an hour away.
    wait_for(lambda: _reports(hub, uid)["report_status"] == "final", 20, "the report at the hub")
    body = _reports(hub, uid)
    assert [r["status"] for r in body["reports"]] == ["final"]
    assert "No acute intracranial abnormality." in body["reports"][0]["text"]
    assert _polls(tmp_path, uid) >= 2
    # Orthanc's hook is what called: once, for the text SR (the dose SR is never announced).
    notes = re.findall(rf"archive_change\s+study_uid={re.escape(uid)} watched=(\w+)", hub.log())
    assert notes == ["True"], notes


def test_the_webhook_takes_only_its_token(
    orthanc_and_hub: tuple[OrthancServer, HubProcess], tmp_path: Path
) -> None:
    _, hub = orthanc_and_hub
    url = f"{hub.url}/api/v1/reports/archive-changes"
    body = {"study_instance_uid": "1.2.826.0.1.3680043.9.1"}
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * 48}
    assert httpx.post(url, json=body, headers=wrong, timeout=10).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(url, json=body, headers=good, timeout=10)
    assert r.status_code == 202 and r.json() == {"watched": False}  # not a study it delivered
    uid = _send(hub, tmp_path)
    wait_for(lambda: _polls(tmp_path, uid) >= 1, 60, "the hub to watch the study")
    image = {"study_instance_uid": uid, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"}
    assert httpx.post(url, json=image, headers=good, timeout=10).json() == {"watched": False}
    sr = {"study_instance_uid": uid, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.11"}
    assert httpx.post(url, json=sr, headers=good, timeout=10).json() == {"watched": True}
    assert httpx.post(url, json=sr, headers=ADMIN, timeout=10).json() == {"watched": True}
    bad = httpx.post(url, json={"study_instance_uid": "not a uid"}, headers=good, timeout=10)
    assert bad.status_code == 422 and bad.json()["code"] == "malformed_uid"
