"""Admin API: forwarding jobs. List them (dead ones with their reason), retry, release held ones.

Admin routes take the access token of a user with role admin, or the admin machine token
(``RELAYPACS_HUB_ADMIN_TOKEN``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from relaypacs_hub.api.deps import AdminAuth, State
from relaypacs_hub.services import jobs
from relaypacs_hub.services.jobs import JobList, JobPublic, JobState
from relaypacs_shared.wire import INT64_MAX

router = APIRouter(prefix="/api/v1/jobs", tags=["admin: jobs"])


class RetryResult(BaseModel):
    retried: list[int]


# A job id is a SQL integer: out of its range is a 422, not a driver overflow (a 500).
JobId = Annotated[int, Path(ge=1, le=INT64_MAX)]


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
    return await jobs.list_jobs(
        state, state=job_state, destination=destination, study=study, limit=limit, offset=offset
    )


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: JobId, state: State, _auth: AdminAuth) -> JobPublic:
    return await jobs.get(state, job_id)


@router.post("/{job_id}/retry", response_model=JobPublic)
async def retry_job(job_id: JobId, state: State, _auth: AdminAuth) -> JobPublic:
    """Send a dead (or backing-off) job again now, with a fresh count of attempts."""
    return await jobs.retry(state, job_id)


@router.post("/{job_id}/release", response_model=JobPublic)
async def release_job(job_id: JobId, state: State, _auth: AdminAuth) -> JobPublic:
    """Let a job that a rule held go to its destination."""
    return await jobs.release(state, job_id)


@router.post("/retry-dead", response_model=RetryResult)
async def retry_dead(state: State, _auth: AdminAuth, destination: str | None = None) -> RetryResult:
    """Retry every dead job (of one destination, with ``?destination=``)."""
    return RetryResult(retried=await jobs.retry_dead(state, destination))
