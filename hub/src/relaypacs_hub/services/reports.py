"""Reports through the API: recording a posted one, a study's reports, a report's document, the
agents' feed, and the Web Push subscriptions the agents relay. The recording itself, the feed and
the polling of archives are ``relaypacs_hub.reports``'."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import delete, select

from relaypacs_hub.audit import audit
from relaypacs_hub.db.models import PushSubscription, Report, StudyReport
from relaypacs_hub.reports.service import (
    NewReport,
    NoFinalReport,
    feed_page,
    record_report,
    report_json,
    study_report_json,
)
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services.errors import Refused, Unknown


async def post(hub: HubRuntime, new: NewReport, actor: str, source: str | None) -> dict[str, Any]:
    """Record a report (409 ``no_final_report`` for an amendment before any final one); the
    report without its text, and the study's report status."""
    try:
        report, created = await record_report(hub.sessionmaker, new, signal=hub.reports)
    except NoFinalReport as exc:
        raise Refused("no_final_report", str(exc)) from exc
    await audit(
        hub.sessionmaker,
        actor,
        "report.posted",
        new.study_instance_uid,
        source=source,
        report_id=report.id,
        status=report.status,
        kind=report.kind,
        duplicate=not created,
    )
    async with hub.sessionmaker() as session:
        row = await session.get(StudyReport, new.study_instance_uid)
        return {
            "report": report_json(report, with_text=False),
            "study": study_report_json(row, new.study_instance_uid),
        }


async def study_reports(
    hub: HubRuntime, study_uid: str, reader: str | None, source: str | None
) -> dict[str, Any]:
    """A study's report status and its reports, newest first; a person's read (``reader``) of
    any report is audited."""
    async with hub.sessionmaker() as session:
        row = await session.get(StudyReport, study_uid)
        reports = list(
            await session.scalars(
                select(Report)
                .where(Report.study_instance_uid == study_uid)
                .order_by(Report.id.desc())
            )
        )
    if reports and reader is not None:
        await audit(
            hub.sessionmaker,
            reader,
            "report.read",
            study_uid,
            source=source,
            reports=len(reports),
        )
    return {**study_report_json(row, study_uid), "reports": [report_json(r) for r in reports]}


@dataclass(frozen=True)
class Document:
    report_id: int
    study_uid: str
    content: bytes
    content_type: str


async def document(hub: HubRuntime, report_id: int) -> Document:
    """A report's document (a PDF); 404 ``unknown_report`` when it has none."""
    async with hub.sessionmaker() as session:
        report = await session.get(Report, report_id)
    if report is None or report.content is None:
        raise Unknown("unknown_report", "no such report document")
    return Document(
        report.id,
        report.study_instance_uid,
        report.content,
        report.content_type or "application/octet-stream",
    )


async def note_document_read(
    hub: HubRuntime, doc: Document, reader: str, source: str | None
) -> None:
    await audit(
        hub.sessionmaker,
        reader,
        "report.read",
        doc.study_uid,
        source=source,
        report_id=doc.report_id,
    )


async def feed(
    hub: HubRuntime, facility: str | None, after: int, wait: float, limit: int
) -> dict[str, Any]:
    """A facility's report events after ``after`` (None: every facility), waiting up to ``wait``
    seconds for one; ``cursor`` is the ``after`` of the next call."""
    loop_time = anyio.current_time
    deadline = loop_time() + wait
    while True:
        page = await feed_page(hub.sessionmaker, facility, after, limit)
        remaining = deadline - loop_time()
        if page or remaining <= 0:
            break
        await hub.reports.wait(min(1.0, remaining))
    return {
        "cursor": page[-1][0].seq if page else after,
        "events": [
            {"seq": event.seq, "at": event.at.isoformat() + "Z", "report": report_json(report)}
            for event, report in page
        ],
    }


async def subscribe(
    hub: HubRuntime,
    *,
    endpoint: str,
    p256dh: str,
    auth: str,
    facility: str,
    username: str,
    actor: str,
    source: str | None,
) -> None:
    """Keep a browser's push subscription for ``facility`` (a new one, or the endpoint's again)."""
    async with hub.sessionmaker() as session, session.begin():
        row = await session.scalar(
            select(PushSubscription).where(PushSubscription.endpoint == endpoint)
        )
        if row is None:
            row = PushSubscription(endpoint=endpoint)
            session.add(row)
        row.p256dh = p256dh
        row.auth = auth
        row.facility = facility
        row.username = username
        row.last_error = None
    await audit(
        hub.sessionmaker,
        actor,
        "push.subscribed",
        username,
        source=source,
        facility=facility,
    )


async def unsubscribe(hub: HubRuntime, endpoint: str, facility: str) -> None:
    async with hub.sessionmaker() as session, session.begin():
        await session.execute(
            delete(PushSubscription).where(
                PushSubscription.endpoint == endpoint,
                PushSubscription.facility == facility,
            )
        )
