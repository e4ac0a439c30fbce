"""Report discovery against a real Orthanc: after a study is delivered, a reporting system stores
a text SR, an Encapsulated PDF and dose SRs into the archive by STOW-RS; the hub's poller finds
the reports (QIDO-RS, WADO-RS), leaves the dose SRs out with the reason, and follows a
preliminary, final, amended sequence. One poller runs across replicas (a lease)."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from relaypacs_dev.generate import generate_study
from relaypacs_dev.reports import dose_sr, encapsulated_pdf, minimal_pdf, text_sr
from relaypacs_hub.db.models import ReportSkip, StudyReport, utcnow
from relaypacs_hub.reports.poller import ReportPoller, poll_interval
from tests.hub.conftest import HubClient, hub_settings, write_destinations
from tests.support.reports import stow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def _reports(hub: HubClient, study_uid: str) -> dict[str, Any]:
    r = await hub.client.get(f"/api/v1/studies/{study_uid}/reports", headers=hub.admin)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _until(hub: HubClient, study_uid: str, pred: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    body: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        body = await _reports(hub, study_uid)
        if pred(body):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out: {body}")


async def test_reports_stored_in_orthanc_after_delivery_are_found(
    tmp_path: Path, orthanc: Any, make_hub: Any
) -> None:
    dests = write_destinations(
        tmp_path / "d.toml",
        {"name": "orthanc", "type": "dicomweb", "profile": "orthanc", "url": orthanc.dicomweb_url},
    )
    hub: HubClient = await make_hub(
        hub_settings(tmp_path, dests, report_poll_seconds=0.5, report_poll_stat_seconds=0.2)
    )
    study = generate_study(tmp_path / "ct", instances=3, rows=32, columns=32, seed=41)
    uid = study.study_instance_uid
    await hub.send(study, "stat")
    await hub.wait_delivered(uid)
    accession = str(pydicom.dcmread(study.files[0], stop_before_pixels=True).AccessionNumber)

    pdf = minimal_pdf(["CT head report", "Impression: no acute findings."])
    prelim = text_sr(uid, findings="Preliminary read: no bleed.", status="preliminary")
    stow(orthanc.dicomweb_url, prelim, dose_sr(uid), dose_sr(uid, comprehensive=True))
    body = await _until(hub, uid, lambda b: b["report_status"] == "preliminary")
    assert [r["kind"] for r in body["reports"]] == ["sr"]
    assert "no bleed" in body["reports"][0]["text"]

    final = text_sr(uid, findings="No acute intracranial abnormality.", impression="Normal.")
    stow(orthanc.dicomweb_url, final, encapsulated_pdf(uid, pdf))
    body = await _until(hub, uid, lambda b: len(b["reports"]) == 3)
    assert body["report_status"] == "final"
    assert body["time_to_report_seconds"] is not None
    pdf_report = next(r for r in body["reports"] if r["kind"] == "pdf")
    r = await hub.client.get(f"/api/v1/reports/{pdf_report['id']}/content", headers=hub.admin)
    assert r.content == pdf

    first = pydicom.dcmread(io.BytesIO(final))
    amended = text_sr(
        uid,
        findings="Addendum: 3 mm left frontal contusion.",
        predecessor=(first.SeriesInstanceUID, first.SOPInstanceUID),
    )
    stow(orthanc.dicomweb_url, amended)
    body = await _until(hub, uid, lambda b: b["report_status"] == "amended")
    assert body["reports"][0]["status"] == "amended"
    assert "contusion" in body["reports"][0]["text"]
    assert len(body["reports"]) == 4  # the dose SRs are not reports

    async with hub.state.sessionmaker() as session:
        skips = {s.reason for s in await session.scalars(select(ReportSkip))}
        row = await session.get(StudyReport, uid)
    assert skips == {
        "X-Ray Radiation Dose SR is not a report",
        "the document is a radiation dose report (X-Ray Radiation Dose Report)",
    }
    assert row is not None and row.stat and row.accession_number == accession


async def test_one_poller_holds_the_lease_across_replicas(tmp_path: Path, pg_url: str) -> None:
    from relaypacs_hub.config import HubSettings
    from relaypacs_hub.db.migrate import upgrade
    from relaypacs_hub.db.session import make_engine, make_sessionmaker

    await asyncio.to_thread(upgrade, pg_url)
    engine = make_engine(pg_url)
    sm = make_sessionmaker(engine)
    now = [utcnow()]
    settings = HubSettings(data_dir=tmp_path, database_url=pg_url)
    a = ReportPoller(settings, sm, None, {}, clock=lambda: now[0])  # type: ignore[arg-type]
    b = ReportPoller(settings, sm, None, {}, clock=lambda: now[0])  # type: ignore[arg-type]
    try:
        results = await asyncio.gather(a.hold_lease(), b.hold_lease())
        assert sorted(results) == [False, True]
        leader, other = (a, b) if results[0] else (b, a)
        assert await leader.hold_lease() and not await other.hold_lease()
        now[0] += timedelta(seconds=leader.lease_seconds + 1)  # the leader died
        assert await other.hold_lease() and not await leader.hold_lease()
    finally:
        await engine.dispose()


def test_poll_interval_backs_off_with_age_and_stops() -> None:
    from relaypacs_hub.config import HubSettings

    s = HubSettings(report_poll_seconds=20, report_poll_stat_seconds=5, report_poll_days=14)
    assert poll_interval(s, 60, stat=False) == 20
    assert poll_interval(s, 60, stat=True) == 5
    assert poll_interval(s, 6 * 3600, stat=False) == 120
    assert poll_interval(s, 13 * 86400, stat=False) == s.report_poll_max_seconds
    assert poll_interval(s, 15 * 86400, stat=False) is None


async def test_orthanc_changes_feed_finds_a_report_long_before_the_next_poll(
    tmp_path: Path, orthanc: Any, make_hub: Any
) -> None:
    dests = write_destinations(
        tmp_path / "d.toml",
        {"name": "orthanc", "type": "dicomweb", "profile": "orthanc", "url": orthanc.dicomweb_url},
    )
    # The scheduled poll is an hour away: only the changes feed can find the report in time.
    hub: HubClient = await make_hub(
        hub_settings(tmp_path, dests, report_poll_seconds=3600, report_poll_stat_seconds=3600)
    )
    study = generate_study(tmp_path / "ct", instances=2, rows=32, columns=32, seed=43)
    uid = study.study_instance_uid
    await hub.send(study)
    await hub.wait_delivered(uid)
    async with hub.state.sessionmaker() as session:  # watched, first poll done
        for _ in range(100):
            row = await session.get(StudyReport, uid)
            if row is not None and row.polls >= 1:
                break
            await asyncio.sleep(0.1)
            session.expire_all()
    started = asyncio.get_running_loop().time()
    stow(orthanc.dicomweb_url, text_sr(uid, findings="Normal study."))
    await _until(hub, uid, lambda b: b["report_status"] == "final", timeout=15)
    assert asyncio.get_running_loop().time() - started < 15
