"""Admin API: forwarding jobs. List them (dead ones with their reason), retry, release held ones.

Admin routes take the access token of a user with role admin, or the admin machine token
(``RELAYPACS_HUB_ADMIN_TOKEN``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel
from sqlalchemy import func, select

from relaypacs_hub.api.deps import AdminAuth, DeliveryDep, State
from relaypacs_hub.audit import audit
from relaypacs_hub.db.models import ForwardJob, JobState, utcnow
from relaypacs_shared.wire import INT64_MAX

router = APIRouter(prefix="/api/v1/jobs", tags=["admin: jobs"])


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


class RetryResult(BaseModel):
    retried: list[int]


# A job id is a SQL integer: out of its range is a 422, not a driver overflow (a 500).
JobId = Annotated[int, Path(ge=1, le=INT64_MAX)]


def _problem(code: int, kind: str, detail: str) -> HTTPException:
    return HTTPException(status_code=code, detail={"code": kind, "detail": detail})


@router.get("", response_model=JobList)
async def list_jobs(
    state: State,
    _auth: AdminAuth,
    job_state: Annotated[JobState | None, Query(alias="state")] = None,
    destination: str | None = None,
    study: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
) -> JobList:
    """Forwarding jobs, newest change first. ``?state=dead`` lists the parked ones and why."""
    conditions = []
    if job_state is not None:
        conditions.append(ForwardJob.state == job_state)
    if destination is not None:
        conditions.append(ForwardJob.destination == destination)
    if study is not None:
        conditions.append(ForwardJob.study_instance_uid == study)
    async with state.sessionmaker() as session:
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


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: JobId, state: State, _auth: AdminAuth) -> JobPublic:
    async with state.sessionmaker() as session:
        job = await session.get(ForwardJob, job_id)
        if job is None:
            raise _problem(404, "unknown_job", f"no forwarding job {job_id}")
        return JobPublic.of(job)


@router.post("/{job_id}/retry", response_model=JobPublic)
async def retry_job(
    job_id: JobId, state: State, delivery: DeliveryDep, _auth: AdminAuth
) -> JobPublic:
    """Send a dead (or backing-off) job again now, with a fresh count of attempts."""
    async with state.sessionmaker() as session, session.begin():
        job = await session.get(ForwardJob, job_id, with_for_update=True)
        if job is None:
            raise _problem(404, "unknown_job", f"no forwarding job {job_id}")
        if job.state not in (JobState.DEAD, JobState.PENDING):
            raise _problem(
                409, "not_retryable", f"job {job_id} is {job.state}; only dead or pending jobs"
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
    delivery.wake()
    return out


@router.post("/{job_id}/release", response_model=JobPublic)
async def release_job(
    job_id: JobId, state: State, delivery: DeliveryDep, _auth: AdminAuth
) -> JobPublic:
    """Let a job that a rule held go to its destination."""
    async with state.sessionmaker() as session, session.begin():
        job = await session.get(ForwardJob, job_id, with_for_update=True)
        if job is None:
            raise _problem(404, "unknown_job", f"no forwarding job {job_id}")
        if job.state != JobState.HELD:
            raise _problem(409, "not_held", f"job {job_id} is {job.state}, not held")
        _requeue(job)
        job.held_by = None
        out = JobPublic.of(job)
    delivery.wake()
    return out


@router.post("/retry-dead", response_model=RetryResult)
async def retry_dead(
    state: State, delivery: DeliveryDep, _auth: AdminAuth, destination: str | None = None
) -> RetryResult:
    """Retry every dead job (of one destination, with ``?destination=``)."""
    async with state.sessionmaker() as session, session.begin():
        stmt = select(ForwardJob).where(ForwardJob.state == JobState.DEAD).with_for_update()
        if destination is not None:
            stmt = stmt.where(ForwardJob.destination == destination)
        jobs = list(await session.scalars(stmt))
        for job in jobs:
            _requeue(job)
        ids = [j.id for j in jobs]
    if ids:
        delivery.wake()
    return RetryResult(retried=ids)


def _requeue(job: ForwardJob) -> None:
    now = utcnow()
    job.state = JobState.PENDING
    job.attempts = 0
    job.next_attempt_at = now
    job.updated_at = now
    job.lease_until = None
    job.lease_owner = None
