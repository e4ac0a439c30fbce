"""The forwarding worker: takes due jobs from the database queue and delivers them.

Any number of workers (in ``serve`` processes or separate ``worker`` processes) share the queue.

- **Claiming.** On PostgreSQL a job is taken with ``FOR UPDATE SKIP LOCKED`` inside a short
  transaction that first takes a transaction-scoped advisory lock, so the per-destination
  concurrency limit (``max_concurrent_jobs``) holds across every worker: the count of running jobs
  and the claim are one atomic step. On SQLite (one process) an in-process lock does the same.
  Higher priority first (STAT 100, routine 0, or what the rules say), then the oldest due job.
- **Leases.** A claimed job carries ``lease_owner`` (this worker) and ``lease_until``, renewed at
  every batch. A worker that dies loses its jobs to another after ``job_lease_seconds``; a worker
  that finds its lease taken stops at the next batch, and writes nothing more to the job.
- **Preemption.** At every batch boundary a running job asks whether a higher-priority job waits
  for the same destination while that destination is at its limit; if so it steps aside (back to
  pending, the attempt not counted) and resumes later with what is left. So a STAT study does not
  wait behind a 500-instance routine one.
- **Confirmation.** After sending, the archive is asked what it holds (``Destination.confirm``);
  a job is done only when every committed instance is confirmed. An instance the archive says it
  accepted but does not hold is sent again on the next attempt.
- **Failures** retry with exponential backoff (with jitter, capped); after
  ``forward_max_attempts`` (3 for refusals a retry cannot cure) a job is parked as ``dead`` with
  its reason, listed and retryable through ``/api/v1/jobs``.
- **Time to PACS** is recorded when a job is done: from the agent's receipt of the study (or the
  hub's first receipt) to the archive's confirmation.
- **Retention.** With ``retention_hours`` set, a study whose every job is done leaves the object
  store that long after its last confirmation (the database keeps its record).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from sqlalchemy import and_, delete, exists, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub import metrics
from relaypacs_hub.audit import audit
from relaypacs_hub.config import HubSettings
from relaypacs_hub.db.models import (
    ForwardJob,
    Instance,
    InstanceDelivery,
    JobState,
    Study,
    StudyRoute,
    utcnow,
)
from relaypacs_hub.db.session import DATABASE_ERRORS
from relaypacs_hub.forwarding.base import DeliveryResult, Destination, OutgoingInstance
from relaypacs_hub.storage.base import ObjectStore
from relaypacs_shared.errors import DestinationError, RelayError, StorageError, is_transient

log = structlog.get_logger("relaypacs.hub.forward")
_T = TypeVar("_T")
# Backoff of a job outcome the database could not take (seconds).
SETTLE_FIRST_RETRY = 1.0
SETTLE_MAX_RETRY = 15.0

# Serialises claims across every hub process on PostgreSQL ("RELAY" + 1; migrations use "RELAY").
_CLAIM_LOCK = 0x52454C4159 + 1
# A refusal that retrying cannot fix is parked after this many attempts.
PERMANENT_FAILURE_ATTEMPTS = 3
RETENTION_SWEEP_SECONDS = 30.0


def new_worker_id() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ForwardingWorker:
    def __init__(
        self,
        settings: HubSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        destinations: Mapping[str, Destination],
        limits: Mapping[str, int] | None = None,
    ) -> None:
        """``limits``: per-destination cap on jobs in flight across all workers (None: no cap)."""
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.store = store
        self.destinations = dict(destinations)
        self.limits = dict(limits) if limits is not None else None
        self.worker_id = new_worker_id()
        self.concurrency = max(1, getattr(settings, "worker_concurrency", 1))
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._claim_lock = asyncio.Lock()
        self._last_sweep = 0.0

    def wake(self) -> None:
        """Called after a commit so a waiting worker does not sleep out its poll interval."""
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "worker_started",
            worker=self.worker_id,
            destinations=sorted(self.destinations),
            concurrency=self.concurrency,
        )
        running: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self._wake.clear()
                claimed = False
                while len(running) < self.concurrency and not stop.is_set():
                    try:
                        job = await self.claim()
                    except Exception:
                        log.exception("claim_failed", worker=self.worker_id)
                        job = None
                    if job is None:
                        break
                    claimed = True
                    running.add(asyncio.create_task(self.process(job)))
                if loop.time() - self._last_sweep > RETENTION_SWEEP_SECONDS:
                    self._last_sweep = loop.time()
                    try:
                        await self.sweep_retention()
                    except Exception:
                        log.exception("retention_sweep_failed")
                if claimed and len(running) < self.concurrency:
                    continue
                signals = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self._wake.wait()),
                ]
                await asyncio.wait(
                    [*signals, *running],
                    timeout=self.settings.worker_poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for w in signals:
                    w.cancel()
                running = {t for t in running if not t.done()}
        finally:
            # Jobs in flight stop at their next batch boundary and go back to the queue.
            self._stopping.set()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            log.info("worker_stopped", worker=self.worker_id)

    async def run_once(self) -> bool:
        """Claim one due job and deliver it; False when nothing was due."""
        job = await self.claim()
        if job is None:
            return False
        await self.process(job)
        return True

    # -- claiming -----------------------------------------------------------------------------

    async def claim(self) -> ForwardJob | None:
        async with self._claim_lock, self.sessionmaker() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CLAIM_LOCK})
            now = utcnow()
            eligible = await self._eligible_destinations(session, now)
            if not eligible:
                return None
            stmt = (
                select(ForwardJob)
                .where(ForwardJob.destination.in_(eligible))
                .where(
                    or_(
                        (ForwardJob.state == JobState.PENDING)
                        & (ForwardJob.next_attempt_at <= now),
                        (ForwardJob.state == JobState.RUNNING) & (ForwardJob.lease_until < now),
                    )
                )
                .order_by(ForwardJob.priority.desc(), ForwardJob.next_attempt_at, ForwardJob.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            job = await session.scalar(stmt)
            if job is None:
                return None
            if job.state == JobState.RUNNING:
                log.warning(
                    "lease_taken_over",
                    job_id=job.id,
                    previous_owner=job.lease_owner,
                    worker=self.worker_id,
                )
            job.state = JobState.RUNNING
            job.attempts += 1
            job.lease_owner = self.worker_id
            job.lease_until = now + timedelta(seconds=self.settings.job_lease_seconds)
            job.updated_at = now
            return job

    async def _eligible_destinations(self, session: AsyncSession, now: datetime) -> list[str]:
        if self.limits is None:
            return list(self.destinations)
        running = dict(
            (
                await session.execute(
                    select(ForwardJob.destination, func.count())
                    .where(ForwardJob.state == JobState.RUNNING)
                    .where(ForwardJob.lease_until >= now)
                    .where(ForwardJob.destination.in_(list(self.destinations)))
                    .group_by(ForwardJob.destination)
                )
            ).all()
        )
        return [d for d in self.destinations if running.get(d, 0) < self.limits.get(d, 1_000_000)]

    # -- one job ------------------------------------------------------------------------------

    async def process(self, job: ForwardJob) -> None:
        dest = self.destinations[job.destination]
        bound = log.bind(
            study_uid=job.study_instance_uid,
            destination=job.destination,
            job_id=job.id,
            worker=self.worker_id,
        )
        try:
            outcome, detail = await self._forward(job, dest)
        except RelayError as exc:
            reason, transient = f"{type(exc).__name__}: {exc}", is_transient(exc)
            await self._settle(
                bound, "failed", lambda: self._fail(job, reason, transient=transient)
            )
            bound.warning("forward_failed", attempt=job.attempts, error=str(exc)[:300])
            return
        except Exception as exc:  # a bug, an unexpected library error, the database gone
            bound.exception("forward_crashed", attempt=job.attempts, error_type=type(exc).__name__)
            reason = f"unexpected {type(exc).__name__}: {exc}"
            await self._settle(bound, "failed", lambda: self._fail(job, reason, transient=True))
            return
        if outcome == "done":
            ttp = await self._settle(bound, "done", lambda: self._finish(job))
            bound.info("forward_done", attempt=job.attempts, time_to_pacs_seconds=ttp)
        elif outcome == "yielded":
            await self._settle(bound, "yielded", lambda: self._step_aside(job))
            bound.info("forward_yielded", attempt=job.attempts, reason=detail)
        elif outcome == "lost":
            bound.warning("lease_lost", attempt=job.attempts)
        else:
            await self._settle(bound, "failed", lambda: self._fail(job, detail, transient=True))
            bound.warning("forward_incomplete", attempt=job.attempts, detail=detail[:300])

    async def _settle(
        self, bound: Any, outcome: str, write: Callable[[], Awaitable[_T]]
    ) -> _T | None:
        """Write a job's outcome, retrying while the database is unreachable.

        A PostgreSQL outage mid-job once left the job "running" until its lease expired, with
        nothing logged: the failure handler's own write failed and its exception was lost. Now
        every failed write is logged with what it was for, retried with backoff for as long as
        the lease lasts, and if the database is still gone the log says the lease will hand the
        job to the next attempt.
        """
        delay = SETTLE_FIRST_RETRY
        deadline = asyncio.get_running_loop().time() + self.settings.job_lease_seconds
        while True:
            try:
                return await write()
            except DATABASE_ERRORS as exc:
                now = asyncio.get_running_loop().time()
                if now + delay > deadline:
                    bound.error(
                        "job_outcome_unwritten",
                        outcome=outcome,
                        error_type=type(exc).__name__,
                        detail="the database stayed unreachable; the job is attempted again "
                        "when its lease expires",
                    )
                    return None
                bound.warning(
                    "job_outcome_write_failed",
                    outcome=outcome,
                    error_type=type(exc).__name__,
                    retry_in_seconds=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, SETTLE_MAX_RETRY)

    async def _committed(self, study_uid: str) -> list[Instance]:
        async with self.sessionmaker() as session:
            rows = await session.scalars(
                select(Instance)
                .where(Instance.study_instance_uid == study_uid)
                .where(Instance.committed_at.is_not(None))
                .order_by(Instance.series_instance_uid, Instance.sop_instance_uid)
            )
            return list(rows)

    async def _delivered(self, destination: str, sop_uids: Sequence[str]) -> set[str]:
        async with self.sessionmaker() as session:
            out: set[str] = set()
            for chunk in _chunks(sop_uids):
                out.update(
                    await session.scalars(
                        select(InstanceDelivery.sop_instance_uid)
                        .where(InstanceDelivery.destination == destination)
                        .where(InstanceDelivery.sop_instance_uid.in_(chunk))
                    )
                )
            return out

    def _outgoing(self, inst: Instance) -> OutgoingInstance:
        key = inst.object_key
        store = self.store

        async def read() -> bytes:
            return await store.get_bytes(key)

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for chunk in store.iter_bytes(key):
                    yield chunk
            except OSError as exc:
                raise StorageError(f"cannot read object {key}: {exc}") from exc

        return OutgoingInstance(
            sop_instance_uid=inst.sop_instance_uid,
            series_instance_uid=inst.series_instance_uid,
            sop_class_uid=inst.sop_class_uid,
            transfer_syntax_uid=inst.transfer_syntax_uid,
            sha256=inst.sha256,
            size=inst.size,
            read=read,
            stream=stream,
        )

    async def _forward(self, job: ForwardJob, dest: Destination) -> tuple[str, str]:
        """Deliver what is missing, then confirm: ("done" | "yielded" | "lost" | "incomplete")."""
        instances = await self._committed(job.study_instance_uid)
        if not instances:
            return "incomplete", "the study has no committed instances yet"
        all_uids = [i.sop_instance_uid for i in instances]
        already = await self._delivered(job.destination, all_uids)
        if job.attempts > 1 and len(already) < len(all_uids):
            # A retry: the archive may hold more than we know (a crash after it stored a batch,
            # or someone sent it). Whatever it holds is not sent again.
            held_before = await dest.confirm(job.study_instance_uid, all_uids)
            if held_before:
                await self._record_confirmed(job.destination, held_before)
                already |= held_before
        todo = [self._outgoing(i) for i in instances if i.sop_instance_uid not in already]
        failed: dict[str, str] = {}
        verdict: list[str] = []
        if todo:

            async def on_batch(batch: DeliveryResult) -> bool:
                if batch.delivered:
                    await self._record_delivered(job.destination, batch.delivered)
                go_on, why = await self._keep_going(job)
                if not go_on:
                    verdict.append(why)
                return go_on

            result = await dest.deliver(job.study_instance_uid, todo, on_batch)
            failed = dict(result.failed)
            if verdict and verdict[0] == "lost":
                return "lost", "lease lost"
            if result.stopped:
                return "yielded", verdict[0] if verdict else "stopped"
        held = await dest.confirm(job.study_instance_uid, all_uids)
        if held is None:
            # The archive cannot be asked: its acknowledgements are the confirmation.
            held = await self._delivered(job.destination, all_uids)
        await self._record_confirmed(job.destination, held)
        missing = [u for u in all_uids if u not in held]
        if not missing:
            return "done", ""
        await self._forget_unheld(job.destination, missing)
        reasons = sorted({failed[u] for u in missing if u in failed})
        detail = f"{len(missing)} of {len(all_uids)} instance(s) not confirmed by the archive"
        if reasons:
            detail += ": " + "; ".join(reasons)[:500]
        permanent = len(reasons) == 1 and not _retry_may_help(reasons[0])
        if permanent and all(u in failed for u in missing):
            raise DestinationError(detail)
        return "incomplete", detail

    async def _keep_going(self, job: ForwardJob) -> tuple[bool, str]:
        """At a batch boundary: renew the lease, and say whether to go on."""
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            renewed = await session.execute(
                update(ForwardJob)
                .where(ForwardJob.id == job.id)
                .where(ForwardJob.state == JobState.RUNNING)
                .where(ForwardJob.lease_owner == self.worker_id)
                .values(
                    lease_until=now + timedelta(seconds=self.settings.job_lease_seconds),
                    updated_at=now,
                )
            )
            if not getattr(renewed, "rowcount", 1):
                return False, "lost"
            if self._stopping.is_set():
                return False, "worker stopping"
            if self.limits is None:
                return True, ""
            waiting = await session.scalar(
                select(func.count())
                .select_from(ForwardJob)
                .where(ForwardJob.destination == job.destination)
                .where(ForwardJob.state == JobState.PENDING)
                .where(ForwardJob.next_attempt_at <= now)
                .where(ForwardJob.priority > job.priority)
            )
            if not waiting:
                return True, ""
            running = await session.scalar(
                select(func.count())
                .select_from(ForwardJob)
                .where(ForwardJob.destination == job.destination)
                .where(ForwardJob.state == JobState.RUNNING)
                .where(ForwardJob.lease_until >= now)
            )
            if (running or 0) >= self.limits.get(job.destination, 1_000_000):
                return False, f"{waiting} higher-priority job(s) waiting for the destination"
            return True, ""

    # -- bookkeeping --------------------------------------------------------------------------

    async def _record_delivered(self, destination: str, sop_uids: set[str]) -> None:
        async with self.sessionmaker() as session, session.begin():
            existing: set[str] = set()
            for chunk in _chunks(sorted(sop_uids)):
                existing.update(
                    await session.scalars(
                        select(InstanceDelivery.sop_instance_uid)
                        .where(InstanceDelivery.destination == destination)
                        .where(InstanceDelivery.sop_instance_uid.in_(chunk))
                    )
                )
            for uid in sop_uids - existing:
                session.add(InstanceDelivery(destination=destination, sop_instance_uid=uid))

    async def _record_confirmed(self, destination: str, sop_uids: set[str]) -> None:
        if not sop_uids:
            return
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            rows: dict[str, InstanceDelivery] = {}
            for chunk in _chunks(sorted(sop_uids)):
                for d in await session.scalars(
                    select(InstanceDelivery)
                    .where(InstanceDelivery.destination == destination)
                    .where(InstanceDelivery.sop_instance_uid.in_(chunk))
                ):
                    rows[d.sop_instance_uid] = d
            for uid in sop_uids:
                row = rows.get(uid)
                if row is None:
                    session.add(
                        InstanceDelivery(
                            destination=destination, sop_instance_uid=uid, confirmed_at=now
                        )
                    )
                elif row.confirmed_at is None:
                    row.confirmed_at = now

    async def _forget_unheld(self, destination: str, sop_uids: Sequence[str]) -> None:
        """The archive does not hold these: whatever it said before, send them again."""
        async with self.sessionmaker() as session, session.begin():
            for chunk in _chunks(sop_uids):
                await session.execute(
                    delete(InstanceDelivery)
                    .where(InstanceDelivery.destination == destination)
                    .where(InstanceDelivery.sop_instance_uid.in_(chunk))
                )

    async def _own(self, session: AsyncSession, job: ForwardJob) -> ForwardJob | None:
        row = await session.get(ForwardJob, job.id, with_for_update=True, populate_existing=True)
        if row is None or row.state != JobState.RUNNING or row.lease_owner != self.worker_id:
            return None  # another worker took the job over, or an admin changed it
        return row

    async def _finish(self, job: ForwardJob) -> float | None:
        seconds = await self._finish_row(job)
        if seconds is not None:
            async with self.sessionmaker() as session:
                found = (
                    await session.execute(
                        select(Study.service_level, StudyRoute.facility)
                        .select_from(Study)
                        .outerjoin(
                            StudyRoute, StudyRoute.study_instance_uid == Study.study_instance_uid
                        )
                        .where(Study.study_instance_uid == job.study_instance_uid)
                    )
                ).first()
            level, facility = (found[0], found[1]) if found else ("routine", None)
            metrics.delivered(job.destination, level, facility, seconds)
        return seconds

    async def _finish_row(self, job: ForwardJob) -> float | None:
        async with self.sessionmaker() as session, session.begin():
            row = await self._own(session, job)
            if row is None:
                return None
            now = utcnow()
            row.updated_at = now
            row.lease_until = None
            row.lease_owner = None
            committed = await self._committed(job.study_instance_uid)
            delivered = await self._delivered(
                job.destination, [i.sop_instance_uid for i in committed]
            )
            if len(delivered) < len(committed):
                # A commit that arrived while we worked added instances: go round again.
                row.state = JobState.PENDING
                row.next_attempt_at = now
                return None
            row.state = JobState.DONE
            row.completed_at = now
            row.last_error = None
            start = await session.scalar(
                select(func.coalesce(StudyRoute.agent_received_at, Study.first_received_at))
                .select_from(Study)
                .outerjoin(StudyRoute, StudyRoute.study_instance_uid == Study.study_instance_uid)
                .where(Study.study_instance_uid == job.study_instance_uid)
            )
            if isinstance(start, datetime):
                row.time_to_pacs_seconds = max((now - start).total_seconds(), 0.0)
            await audit(
                session,
                f"worker:{self.worker_id}",
                "forward.done",
                job.study_instance_uid,
                destination=job.destination,
                job_id=row.id,
                attempts=row.attempts,
            )
            return row.time_to_pacs_seconds

    async def _step_aside(self, job: ForwardJob) -> None:
        async with self.sessionmaker() as session, session.begin():
            row = await self._own(session, job)
            if row is None:
                return
            now = utcnow()
            row.state = JobState.PENDING
            row.attempts = max(row.attempts - 1, 0)  # yielding is not a failed attempt
            row.next_attempt_at = now
            row.lease_until = None
            row.lease_owner = None
            row.updated_at = now

    async def _fail(self, job: ForwardJob, reason: str, *, transient: bool) -> None:
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            row = await self._own(session, job)
            if row is None:
                return
            row.last_error = reason[:2000]
            row.updated_at = now
            row.lease_until = None
            row.lease_owner = None
            limit = self.settings.forward_max_attempts
            if not transient:
                limit = min(limit, PERMANENT_FAILURE_ATTEMPTS)
            if row.attempts >= limit:
                row.state = JobState.DEAD
                metrics.forward_outcome(row.destination, "dead")
                log.error(
                    "job_dead",
                    job_id=row.id,
                    study_uid=row.study_instance_uid,
                    destination=row.destination,
                    attempts=row.attempts,
                    reason=reason[:300],
                )
                await audit(
                    session,
                    f"worker:{self.worker_id}",
                    "forward.dead",
                    row.study_instance_uid,
                    outcome="serious_failure",
                    destination=row.destination,
                    job_id=row.id,
                    attempts=row.attempts,
                )
            else:
                row.state = JobState.PENDING
                metrics.forward_outcome(row.destination, "retry")
                delay = min(
                    2.0 * 2 ** (row.attempts - 1), self.settings.forward_backoff_max_seconds
                )
                delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
                row.next_attempt_at = now + timedelta(seconds=delay)

    # -- retention ----------------------------------------------------------------------------

    async def sweep_retention(self, now: datetime | None = None) -> int:
        """Remove the instances of fully confirmed studies past retention; how many studies."""
        hours = getattr(self.settings, "retention_hours", None)
        if hours is None:
            return 0
        cutoff = (now or utcnow()) - timedelta(hours=hours)
        not_done = exists().where(
            and_(
                ForwardJob.study_instance_uid == StudyRoute.study_instance_uid,
                ForwardJob.state != JobState.DONE,
            )
        )
        last_done = (
            select(func.max(ForwardJob.completed_at))
            .where(ForwardJob.study_instance_uid == StudyRoute.study_instance_uid)
            .scalar_subquery()
        )
        purged = 0
        async with self.sessionmaker() as session, session.begin():
            routes = list(
                await session.scalars(
                    select(StudyRoute)
                    .where(StudyRoute.purged_at.is_(None))
                    .where(StudyRoute.unrouted.is_(False))
                    .where(~not_done)
                    .where(last_done.is_not(None))
                    .where(last_done < cutoff)
                    .limit(50)
                    .with_for_update(skip_locked=True)
                )
            )
            for route in routes:
                keys = list(
                    await session.scalars(
                        select(Instance.object_key).where(
                            Instance.study_instance_uid == route.study_instance_uid
                        )
                    )
                )
                for key in keys:
                    await self.store.delete(key)
                route.purged_at = utcnow()
                purged += 1
                log.info("study_purged", study_uid=route.study_instance_uid, instances=len(keys))
        return purged


def _retry_may_help(reason: str) -> bool:
    """Per-instance refusals that no retry will change (the archive said no, for a reason)."""
    permanent = (
        "SOP class not supported",
        "refused at negotiation",
        "transfer syntax not supported",
        "data set does not match SOP class",
        "cannot understand the data set",
        "refused: not authorized",
    )
    return not any(p in reason for p in permanent)


def _chunks(items: Sequence[str], size: int = 500) -> list[list[str]]:
    seq = list(items)
    return [seq[i : i + size] for i in range(0, len(seq), size)]


__all__ = ["DestinationError", "ForwardingWorker"]
