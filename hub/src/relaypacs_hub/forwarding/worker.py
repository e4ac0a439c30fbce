"""The forwarding worker: takes due jobs from the database queue and delivers them.

Any number of workers (in ``serve`` processes or separate ``worker`` processes) share the queue:
on PostgreSQL a job is claimed with ``FOR UPDATE SKIP LOCKED`` and held by a lease, so a worker
that dies mid-job loses it to another after ``job_lease_seconds``. STAT jobs (higher priority)
are taken first. A job is done only when the archive confirms it holds every committed instance;
otherwise it is retried with exponential backoff and, after ``forward_max_attempts``, parked as
``dead`` with its reason.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import timedelta

import structlog
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.config import HubSettings
from relaypacs_hub.db.models import ForwardJob, Instance, InstanceDelivery, utcnow
from relaypacs_hub.forwarding.base import Destination, OutgoingInstance
from relaypacs_hub.storage.base import ObjectStore
from relaypacs_shared.errors import DestinationError, RelayError, is_transient

log = structlog.get_logger("relaypacs.hub.forward")


class ForwardingWorker:
    def __init__(
        self,
        settings: HubSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        destinations: dict[str, Destination],
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.store = store
        self.destinations = destinations
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after a commit so a waiting worker does not sleep out its poll interval."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker_started", destinations=sorted(self.destinations))
        while not stop.is_set():
            try:
                worked = await self.run_once()
            except Exception:
                log.exception("worker_loop_error")
                worked = False
            if not worked:
                self._wake.clear()
                waiters = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self._wake.wait()),
                ]
                await asyncio.wait(
                    waiters,
                    timeout=self.settings.worker_poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for w in waiters:
                    w.cancel()
        log.info("worker_stopped")

    async def claim(self) -> ForwardJob | None:
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            stmt = (
                select(ForwardJob)
                .where(ForwardJob.destination.in_(list(self.destinations)))
                .where(
                    or_(
                        (ForwardJob.state == "pending") & (ForwardJob.next_attempt_at <= now),
                        (ForwardJob.state == "running") & (ForwardJob.lease_until < now),
                    )
                )
                .order_by(ForwardJob.priority.desc(), ForwardJob.next_attempt_at, ForwardJob.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            job = await session.scalar(stmt)
            if job is None:
                return None
            job.state = "running"
            job.attempts += 1
            job.lease_until = now + timedelta(seconds=self.settings.job_lease_seconds)
            job.updated_at = now
            return job

    async def run_once(self) -> bool:
        job = await self.claim()
        if job is None:
            return False
        dest = self.destinations[job.destination]
        bound = log.bind(
            study_uid=job.study_instance_uid, destination=job.destination, job_id=job.id
        )
        try:
            complete, detail = await self._forward(job, dest)
        except RelayError as exc:
            await self._fail(job, f"{type(exc).__name__}: {exc}", transient=is_transient(exc))
            bound.warning("forward_failed", attempt=job.attempts, error=str(exc)[:300])
            return True
        except Exception as exc:  # a bug or an unexpected library error: keep the job, say why
            await self._fail(job, f"unexpected {type(exc).__name__}: {exc}", transient=True)
            bound.exception("forward_crashed", attempt=job.attempts)
            return True
        if complete:
            await self._finish(job)
            bound.info("forward_done", attempt=job.attempts)
        else:
            await self._fail(job, detail, transient=True)
            bound.warning("forward_incomplete", attempt=job.attempts, detail=detail[:300])
        return True

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
            rows = await session.scalars(
                select(InstanceDelivery.sop_instance_uid)
                .where(InstanceDelivery.destination == destination)
                .where(InstanceDelivery.sop_instance_uid.in_(list(sop_uids)))
            )
            return set(rows)

    def _outgoing(self, inst: Instance) -> OutgoingInstance:
        key = inst.object_key

        async def read() -> bytes:
            return await self.store.get_bytes(key)

        return OutgoingInstance(
            sop_instance_uid=inst.sop_instance_uid,
            series_instance_uid=inst.series_instance_uid,
            sop_class_uid=inst.sop_class_uid,
            transfer_syntax_uid=inst.transfer_syntax_uid,
            sha256=inst.sha256,
            size=inst.size,
            read=read,
        )

    async def _forward(self, job: ForwardJob, dest: Destination) -> tuple[bool, str]:
        instances = await self._committed(job.study_instance_uid)
        if not instances:
            return False, "the study has no committed instances yet"
        all_uids = [i.sop_instance_uid for i in instances]
        already = await self._delivered(job.destination, all_uids)
        todo = [self._outgoing(i) for i in instances if i.sop_instance_uid not in already]
        failed: dict[str, str] = {}
        if todo:
            result = await dest.deliver(job.study_instance_uid, todo)
            failed = dict(result.failed)
            if result.delivered:
                await self._record_delivered(job.destination, result.delivered)
        held = await dest.confirm(job.study_instance_uid, all_uids)
        await self._record_confirmed(job.destination, held)
        missing = [u for u in all_uids if u not in held]
        if not missing:
            return True, ""
        reasons = sorted({failed[u] for u in missing if u in failed})
        detail = f"{len(missing)} of {len(all_uids)} instance(s) not confirmed by the archive"
        if reasons:
            detail += ": " + "; ".join(reasons)[:500]
        return False, detail

    async def _record_delivered(self, destination: str, sop_uids: set[str]) -> None:
        async with self.sessionmaker() as session, session.begin():
            existing = set(
                await session.scalars(
                    select(InstanceDelivery.sop_instance_uid)
                    .where(InstanceDelivery.destination == destination)
                    .where(InstanceDelivery.sop_instance_uid.in_(list(sop_uids)))
                )
            )
            for uid in sop_uids - existing:
                session.add(InstanceDelivery(destination=destination, sop_instance_uid=uid))

    async def _record_confirmed(self, destination: str, sop_uids: set[str]) -> None:
        if not sop_uids:
            return
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            rows = {
                d.sop_instance_uid: d
                for d in await session.scalars(
                    select(InstanceDelivery)
                    .where(InstanceDelivery.destination == destination)
                    .where(InstanceDelivery.sop_instance_uid.in_(list(sop_uids)))
                )
            }
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

    async def _finish(self, job: ForwardJob) -> None:
        async with self.sessionmaker() as session, session.begin():
            row = await session.get(ForwardJob, job.id, with_for_update=True)
            if row is None:
                return
            # A commit that arrived while we worked set the job back to pending on purpose;
            # only a job still ours is closed here.
            now = utcnow()
            row.updated_at = now
            if row.state == "running":
                committed = await self._committed(job.study_instance_uid)
                delivered = await self._delivered(
                    job.destination, [i.sop_instance_uid for i in committed]
                )
                if len(delivered) >= len(committed):
                    row.state = "done"
                    row.completed_at = now
                    row.last_error = None
                    row.lease_until = None
                else:
                    row.state = "pending"
                    row.next_attempt_at = now
                    row.lease_until = None

    async def _fail(self, job: ForwardJob, reason: str, *, transient: bool) -> None:
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            row = await session.get(ForwardJob, job.id, with_for_update=True)
            if row is None:
                return
            row.last_error = reason[:2000]
            row.updated_at = now
            row.lease_until = None
            # A refusal that retrying cannot fix is parked sooner than a flaky link.
            limit = 3 if not transient else self.settings.forward_max_attempts
            if row.attempts >= min(limit, self.settings.forward_max_attempts):
                row.state = "dead"
            else:
                row.state = "pending"
                delay = min(
                    2.0 * 2 ** (row.attempts - 1), self.settings.forward_backoff_max_seconds
                )
                delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
                row.next_attempt_at = now + timedelta(seconds=delay)


__all__ = ["DestinationError", "ForwardingWorker"]
