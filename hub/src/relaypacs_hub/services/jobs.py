"""Forwarding jobs for admins: list them, retry dead ones, release held ones."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import func, select

from relaypacs_hub.audit import audit
from relaypacs_hub.db.models import ForwardJob, utcnow
from relaypacs_hub.db.models import JobState as JobState  # the routes' query type too
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services.errors import Refused, Unknown


class JobPublic(BaseModel):
    id: int
    study_instance_uid: str
    destination: str
    state: JobState
    priority: int
    attempts: int
    last_error: str | None
    held_by: str | None
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    time_to_pacs_seconds: float | None

    @classmethod
    def of(cls, job: ForwardJob) -> JobPublic:
        return cls(
            id=job.id,
            study_instance_uid=job.study_instance_uid,
            destination=job.destination,
            state=JobState(job.state),
            priority=job.priority,
            attempts=job.attempts,
            last_error=job.last_error,
            held_by=job.held_by,
            next_attempt_at=job.next_attempt_at,
            created_at=job.created_at,
            updated_at=job.updated_at,
            completed_at=job.completed_at,
            time_to_pacs_seconds=job.time_to_pacs_seconds,
        )


class JobList(BaseModel):
    total: int
    jobs: list[JobPublic]


def _unknown(job_id: int) -> Unknown:
    return Unknown("unknown_job", f"no forwarding job {job_id}")


async def list_jobs(
    hub: HubRuntime,
    *,
    state: JobState | None,
    destination: str | None,
    study: str | None,
    limit: int,
    offset: int,
) -> JobList:
    """Forwarding jobs, newest change first."""
    conditions = []
    if state is not None:
        conditions.append(ForwardJob.state == state)
    if destination is not None:
        conditions.append(ForwardJob.destination == destination)
    if study is not None:
        conditions.append(ForwardJob.study_instance_uid == study)
    async with hub.sessionmaker() as session:
        total = await session.scalar(
            select(func.count()).select_from(ForwardJob).where(*conditions)
        )
        rows = await session.scalars(
            select(ForwardJob)
            .where(*conditions)
            .order_by(ForwardJob.updated_at.desc(), ForwardJob.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return JobList(total=total or 0, jobs=[JobPublic.of(j) for j in rows])


async def get(hub: HubRuntime, job_id: int) -> JobPublic:
    async with hub.sessionmaker() as session:
        job = await session.get(ForwardJob, job_id)
        if job is None:
            raise _unknown(job_id)
        return JobPublic.of(job)


async def retry(hub: HubRuntime, job_id: int) -> JobPublic:
    """Send a dead (or backing-off) job again now, with a fresh count of attempts."""
    async with hub.sessionmaker() as session, session.begin():
        job = await session.get(ForwardJob, job_id, with_for_update=True)
        if job is None:
            raise _unknown(job_id)
        if job.state not in (JobState.DEAD, JobState.PENDING):
            raise Refused(
                "not_retryable", f"job {job_id} is {job.state}; only dead or pending jobs"
            )
        _requeue(job)
        await audit(
            session,
            "admin",
            "admin.job_retry",
            job.study_instance_uid,
            job_id=job_id,
            destination=job.destination,
        )
        out = JobPublic.of(job)
    hub.delivery.wake()
    return out


async def release(hub: HubRuntime, job_id: int) -> JobPublic:
    """Let a job that a rule held go to its destination."""
    async with hub.sessionmaker() as session, session.begin():
        job = await session.get(ForwardJob, job_id, with_for_update=True)
        if job is None:
            raise _unknown(job_id)
        if job.state != JobState.HELD:
            raise Refused("not_held", f"job {job_id} is {job.state}, not held")
        _requeue(job)
        job.held_by = None
        out = JobPublic.of(job)
    hub.delivery.wake()
    return out


async def retry_dead(hub: HubRuntime, destination: str | None) -> list[int]:
    """Retry every dead job (of one destination); the ids retried."""
    async with hub.sessionmaker() as session, session.begin():
        stmt = select(ForwardJob).where(ForwardJob.state == JobState.DEAD).with_for_update()
        if destination is not None:
            stmt = stmt.where(ForwardJob.destination == destination)
        jobs = list(await session.scalars(stmt))
        for job in jobs:
            _requeue(job)
        ids = [j.id for j in jobs]
    if ids:
        hub.delivery.wake()
    return ids


def _requeue(job: ForwardJob) -> None:
    now = utcnow()
    job.state = JobState.PENDING
    job.attempts = 0
    job.next_attempt_at = now
    job.updated_at = now
    job.lease_until = None
    job.lease_owner = None
