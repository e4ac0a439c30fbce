"""Recording a report: one transaction writes the report, the study's new status and times, and
an event in its facility's feed; then waiting feed readers are woken.

A study's report status only moves forward (none → preliminary → final → amended). A report is
an amendment when it says so: an SR or document naming its predecessors, an HL7 result status of
corrected, ``"status": "amended"`` through the API (refused while there is no final report).
Time to report runs from the same start as time to PACS (the agent's receipt of the study, else
the hub's first receipt) to the first final report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.db.models import (
    Report,
    ReportEvent,
    Study,
    StudyFacility,
    StudyReport,
    StudyRoute,
    aware_utc,
    utcnow,
)
from relaypacs_shared.reports import ReportKind, ReportStatus, later_status


class FeedSignal:
    """Wakes feed readers of this process when a report is recorded (other replicas' readers
    look at the database again every second)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.listeners: list[Callable[[int], Any]] = []

    def notify(self, report_id: int) -> None:
        self._event.set()
        self._event = asyncio.Event()
        for listener in list(self.listeners):
            listener(report_id)

    async def wait(self, seconds: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)


class NoFinalReport(ValueError):
    """An amendment was posted for a study with no final report."""


@dataclass(frozen=True)
class NewReport:
    study_instance_uid: str
    source: str
    kind: ReportKind
    status: ReportStatus
    title: str
    text: str
    content: bytes | None = None
    content_type: str | None = None
    sop_instance_uid: str | None = None
    predecessors: Sequence[str] = ()


async def study_facility(session: AsyncSession, study_uid: str) -> str | None:
    route = await session.get(StudyRoute, study_uid)
    if route is not None and route.facility:
        return route.facility
    owner = await session.get(StudyFacility, study_uid)
    return owner.facility if owner is not None else None


async def report_start(session: AsyncSession, study_uid: str) -> datetime | None:
    """When time to report starts: the agent's receipt, else the hub's first receipt."""
    route = await session.get(StudyRoute, study_uid)
    if route is not None and route.agent_received_at is not None:
        return route.agent_received_at
    study = await session.get(Study, study_uid)
    return study.first_received_at if study is not None else None


async def study_report_row(
    session: AsyncSession, study_uid: str, *, now: datetime | None = None
) -> StudyReport:
    """The study's report-tracking row, made when missing.

    Made with INSERT ... ON CONFLICT DO NOTHING: the poller noting a delivery and a report
    arriving (API, HL7, archive) may both make it at the same moment, on any replica.
    """
    row = await session.get(StudyReport, study_uid)
    if row is not None:
        return row
    study = await session.get(Study, study_uid)
    values = {
        "study_instance_uid": study_uid,
        "facility": await study_facility(session, study_uid),
        "report_status": "none",
        "stat": study is not None and study.service_level == "stat",
        "polls": 0,
    }
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(
        insert(StudyReport)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["study_instance_uid"])
    )
    row = await session.get(StudyReport, study_uid, populate_existing=True)
    assert row is not None
    return row


async def record_report(
    sessionmaker: async_sessionmaker[AsyncSession],
    new: NewReport,
    *,
    signal: FeedSignal | None = None,
    now: datetime | None = None,
) -> tuple[Report, bool]:
    """Store the report; returns it and whether it is new (an archive object seen before, by
    SOP Instance UID, is not recorded twice)."""
    now = now or utcnow()
    async with sessionmaker() as session, session.begin():
        if new.sop_instance_uid:
            existing = await session.scalar(
                select(Report).where(Report.sop_instance_uid == new.sop_instance_uid)
            )
            if existing is not None:
                return existing, False
        row = await study_report_row(session, new.study_instance_uid, now=now)
        prior_final = row.report_status in ("final", "amended")
        if new.status == "amended" and not prior_final:
            raise NoFinalReport("the study has no final report to amend; send it as final")
        status = new.status
        report = Report(
            study_instance_uid=new.study_instance_uid,
            facility=row.facility,
            source=new.source[:96],
            sop_instance_uid=new.sop_instance_uid,
            kind=new.kind,
            status=status,
            title=(new.title or "Report")[:200],
            text=new.text,
            content=new.content,
            content_type=new.content_type,
            predecessors_json=json.dumps(list(new.predecessors)),
            received_at=now,
        )
        session.add(report)
        await session.flush()
        row.report_status = later_status(row.report_status, status)
        if status == "preliminary" and row.preliminary_at is None:
            row.preliminary_at = now
        if status in ("final", "amended") and row.final_at is None:
            row.final_at = now
            start = await report_start(session, new.study_instance_uid)
            if start is not None:
                row.time_to_report_seconds = max(0.0, (now - start).total_seconds())
        if status == "amended":
            row.amended_at = now
        session.add(
            ReportEvent(
                facility=row.facility,
                study_instance_uid=new.study_instance_uid,
                report_id=report.id,
                at=now,
            )
        )
    if signal is not None:
        signal.notify(report.id)
    return report, True


async def poll_now(sessionmaker: async_sessionmaker[AsyncSession], study_uid: str) -> bool:
    """An archive says ``study_uid`` changed there: its archives are asked at the poller's next
    tick (whichever replica holds the lease), even when its polls had stopped with age. False
    when the study is not one this hub delivered."""
    async with sessionmaker() as session, session.begin():
        result = await session.execute(
            update(StudyReport)
            .where(StudyReport.study_instance_uid == study_uid)
            .where(StudyReport.delivered_at.is_not(None))
            .values(next_poll_at=utcnow())
        )
    return bool(getattr(result, "rowcount", 0))


def report_json(report: Report, *, with_text: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": report.id,
        "study_instance_uid": report.study_instance_uid,
        "kind": report.kind,
        "status": report.status,
        "title": report.title,
        "source": report.source.split(":", 1)[0],
        "sop_instance_uid": report.sop_instance_uid,
        "content_type": report.content_type,
        "has_content": report.content is not None,
        "predecessors": json.loads(report.predecessors_json or "[]"),
        "received_at": aware_utc(report.received_at),
    }
    if with_text:
        body["text"] = report.text
    return body


def study_report_json(row: StudyReport | None, study_uid: str) -> dict[str, Any]:
    if row is None:
        return {"study_instance_uid": study_uid, "report_status": "none"}
    return {
        "study_instance_uid": study_uid,
        "report_status": row.report_status,
        "delivered_at": aware_utc(row.delivered_at),
        "preliminary_at": aware_utc(row.preliminary_at),
        "final_at": aware_utc(row.final_at),
        "amended_at": aware_utc(row.amended_at),
        "time_to_report_seconds": row.time_to_report_seconds,
    }


async def feed_page(
    sessionmaker: async_sessionmaker[AsyncSession],
    facility: str | None,
    after: int,
    limit: int,
) -> list[tuple[ReportEvent, Report]]:
    """Events after ``after`` for one facility (None: every facility)."""
    async with sessionmaker() as session:
        query = (
            select(ReportEvent, Report)
            .join(Report, Report.id == ReportEvent.report_id)
            .where(ReportEvent.seq > after)
            .order_by(ReportEvent.seq)
            .limit(limit)
        )
        if facility is not None:
            query = query.where(ReportEvent.facility == facility)
        return [(e, r) for e, r in (await session.execute(query)).all()]
