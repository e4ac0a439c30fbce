"""The dashboard's analytics API (/api/v1/analytics and its CSV), on seeded studies: volume by
day and week, facility and modality; success rate; time to PACS and to report by facility and
service level; quarantine and fleet from heartbeats; scoping; the CSV a spreadsheet opens."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from relaypacs_hub.db.models import AgentHeartbeat, Study, utcnow
from relaypacs_hub.reports.service import study_report_row
from tests.hub.authfix import auth_settings, hub_client
from tests.hub.test_dashboard_api import ADMIN, _seed, _user_token


async def _facts(app: Any, uid: str, modalities: str) -> None:
    async with app.state.hub.sessionmaker() as session, session.begin():
        await session.execute(
            update(Study).where(Study.study_instance_uid == uid).values(modalities=modalities)
        )


async def _world(app: Any) -> dict[str, str]:
    now = utcnow()
    today = now.replace(hour=12, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)

    def jobs(state: str, ttp: float | None = None) -> list[tuple[str, str, object, object]]:
        return [("pacs", state, now if state == "done" else None, ttp)]

    # fac-a: two CT delivered today (n=1 stat 60 s, n=2 routine 120 s), one MR dead yesterday;
    # a facility named like a formula: one CR pending today; one study outside the range.
    formula = "=cmd|' /C calc'!A0"
    uids = {
        "a1": await _seed(app, 1, facility="fac-a", received=today, jobs=jobs("done", 60.0)),
        "a2": await _seed(app, 2, facility="fac-a", received=today, jobs=jobs("done", 120.0)),
        "a3": await _seed(app, 3, facility="fac-a", received=yesterday, jobs=jobs("dead")),
        "b4": await _seed(app, 4, facility=formula, received=today, jobs=jobs("pending")),
        "old": await _seed(
            app, 6, facility="fac-a", received=today - timedelta(days=40), jobs=jobs("done", 5.0)
        ),
    }
    await _facts(app, uids["a1"], "CT\\SR")
    await _facts(app, uids["a2"], "CT")
    await _facts(app, uids["a3"], "MR")
    await _facts(app, uids["b4"], "CR")
    async with app.state.hub.sessionmaker() as session, session.begin():
        # The report poller may be noting the same delivered study right now: the row is made
        # the way the hub makes it, race-free.
        report = await study_report_row(session, uids["a1"])
        report.report_status, report.time_to_report_seconds = "final", 900.0
        session.add(
            AgentHeartbeat(
                agent_key="d1", device_id="d1", facility="fac-a", name="ct-room", version="0.1.0",
                received_at=now - timedelta(minutes=20), backlog_studies=2, backlog_bytes=5_000_000,
                oldest_waiting_seconds=3600.0, disk_free_bytes=10, disk_reserve_bytes=100,
                quarantine_json=json.dumps({"not_dicom": 3, "truncated": 1}),
            )
        )  # fmt: skip
    return uids


async def test_figures_add_up_by_facility_modality_and_level(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        await _world(app)
        r = await client.get("/api/v1/analytics", headers=ADMIN)
        assert r.status_code == 200, r.text
        a = r.json()
        assert (a["studies"], a["delivered"], a["failed"]) == (4, 2, 1)  # the old one is out
        assert a["instances"] == 1 + 2 + 3 + 4
        assert a["success_rate"] == 2 / 3
        assert a["time_to_pacs"]["stat"] == {"n": 1, "median_seconds": 60.0, "p95_seconds": 60.0}
        assert a["time_to_pacs"]["routine"]["n"] == 1
        assert a["time_to_report"]["median_seconds"] == 900.0
        fac_a = next(f for f in a["facilities"] if f["facility"] == "fac-a")
        assert (fac_a["studies"], fac_a["delivered"], fac_a["failed"]) == (3, 2, 1)
        assert fac_a["in_progress"] == 0
        mix = {m["modality"]: m["studies"] for m in a["modalities"]}
        assert mix == {"CT": 2, "SR": 1, "MR": 1, "CR": 1}
        today = utcnow().date().isoformat()
        ct_today = [v for v in a["volume"] if v["period"] == today and v["modality"] == "CT"]
        assert ct_today == [
            {"period": today, "facility": "fac-a", "modality": "CT", "studies": 2, "instances": 3}
        ]
        assert {"facility": "fac-a", "reason": "not_dicom", "files": 3} in a["quarantine"]
        (agent,) = a["agents"]
        assert agent["name"] == "ct-room" and agent["disk_below_reserve"] is True
        assert 1100 < agent["silent_seconds"] < 1300

        week = (
            await client.get("/api/v1/analytics", headers=ADMIN, params={"bucket": "week"})
        ).json()
        periods = {v["period"] for v in week["volume"]}
        assert all(date.fromisoformat(p).weekday() == 0 for p in periods)  # Monday weeks
        assert sum(v["studies"] for v in week["volume"]) == 4


async def test_a_radiologist_sees_only_their_facilities(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        await _world(app)
        rad = await _user_token(app, "rad", "radiologist", ["fac-a"])
        a = (await client.get("/api/v1/analytics", headers=rad)).json()
        assert a["studies"] == 3 and {f["facility"] for f in a["facilities"]} == {"fac-a"}
        clinician = await _user_token(app, "nurse", "clinician", ["fac-a"])
        assert (await client.get("/api/v1/analytics", headers=clinician)).status_code == 403


async def test_ranges_are_checked(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        for params in ({"start": "2026-02-01", "end": "2026-01-01"},
                       {"start": "2024-01-01", "end": "2026-01-01"}, {"bucket": "month"},
                       {"start": "yesterday"}):  # fmt: skip
            r = await client.get("/api/v1/analytics", headers=ADMIN, params=params)
            assert r.status_code == 422, (params, r.text)


async def test_the_csv_has_one_row_per_study_and_no_formulas(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        uids = await _world(app)
        r = await client.get("/api/v1/analytics/studies.csv", headers=ADMIN)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        assert 'attachment; filename="relaypacs-studies-' in r.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) == 4
        by_uid = {row["study_instance_uid"]: row for row in rows}
        assert by_uid[uids["a1"]]["modalities"] == "CT\\SR"
        assert by_uid[uids["a1"]]["time_to_report_seconds"] == "900.0"
        assert by_uid[uids["a3"]]["state"] == "failed"
        # A facility name that looks like a formula is made inert for spreadsheets.
        assert by_uid[uids["b4"]]["facility"].startswith("'=")
