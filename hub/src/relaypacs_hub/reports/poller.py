"""The report poller: asks the archives, by QIDO-RS, what they hold of each delivered study that
RelayPACS did not send, and takes what is a report.

- **Which studies.** Every study with a delivery done is watched from its delivery on (a row in
  ``study_reports``, with its facility, STAT or not, and its Accession Number read from one of its
  instances for HL7 matching).
- **How often.** Young studies often, old ones rarely: every ``report_poll_seconds`` (STAT:
  ``report_poll_stat_seconds``) in the first hour after delivery, then that interval times the
  study's age in hours, capped at ``report_poll_max_seconds``; never after ``report_poll_days``.
  After a final report the study is still watched (amendments).
- **What counts.** The SOP Class first (``relaypacs_shared.reports``): an object in a report
  class is fetched by WADO-RS and read; a dose SR, key objects, CAD SRs are noted as not reports
  (``report_skips``, with the reason) and never fetched again; so is a malformed SR.
- **Cheaper signal (Orthanc).** For a destination with profile ``orthanc`` the poller also reads
  Orthanc's ``/changes`` feed every tick (``report_orthanc_changes``); a watched study that got a
  new instance is asked at once instead of at its next scheduled poll.
- **One poller across replicas.** A lease row (``service_leases``) is taken with one conditional
  UPDATE: the replica that holds it polls, the others wait for it to lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import anyio
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.config import HubSettings
from relaypacs_hub.db.models import (
    ForwardJob,
    Instance,
    JobState,
    Report,
    ReportSkip,
    ServiceLease,
    Study,
    StudyReport,
    utcnow,
)
from relaypacs_hub.forwarding.dicomweb import DicomWebDestination
from relaypacs_hub.reports.service import (
    FeedSignal,
    NewReport,
    record_report,
    study_facility,
    study_report_row,
)
from relaypacs_hub.routing.facts import element_values, read_header
from relaypacs_hub.storage.base import ObjectStore
from relaypacs_shared.errors import RelayError
from relaypacs_shared.reports import ReportRejected, classify, parse_report

log = structlog.get_logger("relaypacs.hub.reports")

LEASE_NAME = "report-poller"
ACCESSION_NUMBER = 0x00080050


def poll_interval(settings: HubSettings, age_seconds: float, stat: bool) -> float | None:
    """Seconds to the next poll of a study delivered ``age_seconds`` ago; None: stop."""
    if age_seconds > settings.report_poll_days * 86400:
        return None
    base = settings.report_poll_stat_seconds if stat else settings.report_poll_seconds
    hours = age_seconds / 3600.0
    return min(settings.report_poll_max_seconds, base * max(1.0, hours))


class ReportPoller:
    def __init__(
        self,
        settings: HubSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        destinations: Mapping[str, object],
        signal: FeedSignal | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.store = store
        self.archives = {
            name: d for name, d in destinations.items() if isinstance(d, DicomWebDestination)
        }
        self.signal = signal
        self.clock = clock
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tick_seconds = max(0.2, min(2.0, settings.report_poll_stat_seconds / 2))
        self.lease_seconds = max(30.0, self.tick_seconds * 10)
        self._wake = asyncio.Event()
        # Orthanc's change cursor per destination (profile orthanc, report_orthanc_changes).
        self.cursors: dict[str, int | None] = {
            name: None
            for name, d in self.archives.items()
            if d.profile == "orthanc" and settings.report_orthanc_changes
        }

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("report_poller_started", archives=sorted(self.archives), owner=self.owner)
        while not stop.is_set():
            self._wake.clear()
            try:
                if await self.hold_lease():
                    await self.tick()
            except Exception:
                log.exception("report_poll_failed")
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waiters, timeout=self.tick_seconds, return_when="FIRST_COMPLETED")
            for w in waiters:
                w.cancel()
        await self.release_lease()

    # -- the lease ----------------------------------------------------------------------------

    async def hold_lease(self) -> bool:
        now = self.clock()
        until = now + timedelta(seconds=self.lease_seconds)
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                update(ServiceLease)
                .where(ServiceLease.name == LEASE_NAME)
                .where(
                    (ServiceLease.owner == self.owner)
                    | (ServiceLease.lease_until.is_(None))
                    | (ServiceLease.lease_until < now)
                )
                .values(owner=self.owner, lease_until=until)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                return True
            if await session.get(ServiceLease, LEASE_NAME) is not None:
                return False
        try:
            async with self.sessionmaker() as session, session.begin():
                session.add(ServiceLease(name=LEASE_NAME, owner=self.owner, lease_until=until))
        except IntegrityError:
            return False  # another replica made the row first: it holds the lease
        return True

    async def release_lease(self) -> None:
        with contextlib.suppress(Exception):
            async with self.sessionmaker() as session, session.begin():
                await session.execute(
                    update(ServiceLease)
                    .where(ServiceLease.name == LEASE_NAME, ServiceLease.owner == self.owner)
                    .values(lease_until=None)
                )

    # -- one round --------------------------------------------------------------------------

    async def tick(self) -> int:
        """Watch newly delivered studies, then poll the due ones; returns reports found."""
        await self.watch_delivered()
        await self.follow_changes()
        found = 0
        for study_uid in await self.due():
            found += await self.poll_study(study_uid)
        return found

    async def watch_delivered(self, limit: int = 200) -> int:
        now = self.clock()
        async with self.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(ForwardJob.study_instance_uid, func.min(ForwardJob.completed_at))
                    .outerjoin(
                        StudyReport,
                        StudyReport.study_instance_uid == ForwardJob.study_instance_uid,
                    )
                    .where(ForwardJob.state == JobState.DONE)
                    .where(StudyReport.delivered_at.is_(None))
                    .group_by(ForwardJob.study_instance_uid)
                    .limit(limit)
                )
            ).all()
        for study_uid, delivered_at in rows:
            accession = await self._accession(study_uid)
            async with self.sessionmaker() as session, session.begin():
                study = await session.get(Study, study_uid)
                row = await study_report_row(session, study_uid)
                row.facility = row.facility or await study_facility(session, study_uid)
                row.stat = study is not None and study.service_level == "stat"
                row.accession_number = row.accession_number or accession
                row.delivered_at = delivered_at or now
                row.next_poll_at = now  # an archive may hold a report already
        return len(rows)

    async def follow_changes(self) -> int:
        """Read Orthanc's change feeds; a watched study with a new instance is polled now."""
        touched: set[str] = set()
        for name, since in self.cursors.items():
            try:
                studies, self.cursors[name] = await self.archives[name].orthanc_changes(since)
            except RelayError as exc:
                log.warning("orthanc_changes_failed", destination=name, error=str(exc)[:200])
                continue
            touched.update(studies)
        if not touched:
            return 0
        now = self.clock()
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                update(StudyReport)
                .where(StudyReport.study_instance_uid.in_(touched))
                .where(StudyReport.delivered_at.is_not(None))
                .values(next_poll_at=now)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def _accession(self, study_uid: str) -> str | None:
        async with self.sessionmaker() as session:
            key = await session.scalar(
                select(Instance.object_key).where(Instance.study_instance_uid == study_uid).limit(1)
            )
        if key is None:
            return None
        try:
            values = element_values(await read_header(self.store, key), ACCESSION_NUMBER)
        except Exception:  # purged or unreadable: HL7 matching then falls back to nothing
            return None
        return values[0][:64] if values else None

    async def due(self, limit: int = 50) -> list[str]:
        now = self.clock()
        async with self.sessionmaker() as session:
            return list(
                await session.scalars(
                    select(StudyReport.study_instance_uid)
                    .where(StudyReport.next_poll_at.is_not(None))
                    .where(StudyReport.next_poll_at <= now)
                    .order_by(StudyReport.stat.desc(), StudyReport.next_poll_at)
                    .limit(limit)
                )
            )

    async def _archives_of(self, study_uid: str) -> list[DicomWebDestination]:
        async with self.sessionmaker() as session:
            names = await session.scalars(
                select(ForwardJob.destination).where(
                    ForwardJob.study_instance_uid == study_uid, ForwardJob.state == JobState.DONE
                )
            )
            return [self.archives[n] for n in names if n in self.archives]

    async def poll_study(self, study_uid: str) -> int:
        found = 0
        error: str | None = None
        for archive in await self._archives_of(study_uid):
            try:
                found += await self._poll_archive(archive, study_uid)
            except RelayError as exc:
                error = f"{archive.name}: {exc}"[:500]
                log.warning("report_poll_archive_failed", destination=archive.name, error=error)
        now = self.clock()
        async with self.sessionmaker() as session, session.begin():
            row = await session.get(StudyReport, study_uid)
            if row is None:
                return found
            start = row.delivered_at or now
            interval = poll_interval(self.settings, (now - start).total_seconds(), row.stat)
            row.next_poll_at = None if interval is None else now + timedelta(seconds=interval)
            row.polls += 1
            row.last_polled_at = now
            row.last_error = error
        return found

    async def _poll_archive(self, archive: DicomWebDestination, study_uid: str) -> int:
        held = await archive.search_instances(study_uid)
        async with self.sessionmaker() as session:
            sent = set(
                await session.scalars(
                    select(Instance.sop_instance_uid).where(
                        Instance.study_instance_uid == study_uid
                    )
                )
            )
            known = set(
                await session.scalars(
                    select(Report.sop_instance_uid).where(Report.study_instance_uid == study_uid)
                )
            ) | set(
                await session.scalars(
                    select(ReportSkip.sop_instance_uid).where(
                        ReportSkip.study_instance_uid == study_uid
                    )
                )
            )
        found = 0
        for series_uid, sop_uid, sop_class in held:
            if sop_uid in sent or sop_uid in known:
                continue
            verdict, reason = classify(sop_class)
            if verdict is None:
                continue  # an image someone else added: not ours to judge, not a report
            if verdict is False:
                await self._skip(study_uid, sop_uid, reason)
                continue
            data = await archive.retrieve_instance(study_uid, series_uid, sop_uid)
            if len(data) > self.settings.report_max_bytes:
                await self._skip(study_uid, sop_uid, "the report is larger than report_max_bytes")
                continue
            try:
                parsed = await anyio.to_thread.run_sync(parse_report, data)
            except ReportRejected as exc:
                await self._skip(study_uid, sop_uid, exc.reason)
                continue
            if parsed.study_instance_uid != study_uid:
                await self._skip(study_uid, sop_uid, "the object names another study")
                continue
            _, created = await record_report(
                self.sessionmaker,
                NewReport(
                    study_uid,
                    f"archive:{archive.name}",
                    parsed.kind,
                    parsed.status,
                    parsed.title,
                    parsed.text,
                    content=parsed.content,
                    content_type=parsed.content_type,
                    sop_instance_uid=parsed.sop_instance_uid,
                    predecessors=parsed.predecessors,
                ),
                signal=self.signal,
                now=self.clock(),
            )
            if created:
                found += 1
                log.info(
                    "report_found",
                    destination=archive.name,
                    kind=parsed.kind,
                    status=parsed.status,
                )
        return found

    async def _skip(self, study_uid: str, sop_uid: str, reason: str) -> None:
        log.info("archive_object_not_a_report", reason=reason)
        with contextlib.suppress(IntegrityError):
            async with self.sessionmaker() as session, session.begin():
                session.add(
                    ReportSkip(
                        sop_instance_uid=sop_uid,
                        study_instance_uid=study_uid,
                        reason=reason[:255],
                        seen_at=self.clock(),
                    )
                )
