"""The dashboard's reads: the list of studies with where each stands, and delivery statistics,
over the studies of a scope of facilities (None: every facility; an empty list: none).

A study's state here is derived from its forwarding jobs: ``failed`` when any job is dead,
``delivered`` when it is committed and every job (at least one) is done, else the study's own state
(``receiving`` or ``committed``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, and_, case, false, func, or_, select

from relaypacs_hub.db.models import (
    ForwardJob,
    JobState,
    Study,
    StudyFacility,
    StudyReport,
    StudyRoute,
    aware_utc,
    utcnow,
)
from relaypacs_hub.runtime import HubRuntime

StudyState = Literal["receiving", "committed", "delivered", "failed"]
ReportFilter = Literal["waiting", "preliminary", "final", "amended"]
STUDY_STATES: tuple[str, ...] = ("receiving", "committed", "delivered", "failed")
JOB_STATES: tuple[str, ...] = tuple(JobState)
# Time to PACS statistics read at most this many recent jobs (computed in Python: percentile
# functions differ between SQLite and PostgreSQL).
MAX_TIMING_ROWS = 100_000


class DestinationState(BaseModel):
    name: str
    state: str
    attempts: int
    last_error: str | None
    completed_at: datetime | None
    time_to_pacs_seconds: float | None


class StudySummary(BaseModel):
    study_instance_uid: str
    facility: str | None
    service_level: str
    state: str = Field(description="receiving, committed, delivered or failed (see above).")
    instance_count: int
    first_received_at: datetime | None
    agent_received_at: datetime | None
    committed_at: datetime | None
    delivered_at: datetime | None = Field(
        description="When the last destination confirmed it, once every destination has."
    )
    time_to_pacs_seconds: float | None = Field(
        description="The longest time to PACS over the destinations that have it; else null."
    )
    destinations: list[DestinationState]
    clinical_history: str | None = Field(
        default=None, description="What the sender wrote for the radiologist."
    )
    referring_clinician: str | None = None
    modalities: list[str] = Field(default_factory=list, description="As in (0008,0061).")
    study_date: str | None = Field(default=None, description="Study Date, YYYY-MM-DD.")
    study_description: str | None = None
    accession_number: str | None = None
    report_status: Literal["waiting", "preliminary", "final", "amended"] | None = Field(
        default=None,
        description="Once delivered: waiting (no report yet), preliminary, final or amended; "
        "null before delivery.",
    )
    reported_at: datetime | None = Field(
        default=None, description="When the latest report status was seen."
    )
    first_delivered_at: datetime | None = Field(
        default=None,
        description="When a destination first confirmed the study: since then it waits for "
        "its report.",
    )
    time_to_report_seconds: float | None = Field(
        default=None, description="From delivery to the first final report."
    )


def iso_date(dicom_date: str | None) -> str | None:
    """YYYYMMDD as YYYY-MM-DD; None when absent."""
    if not dicom_date or len(dicom_date) != 8:
        return None
    return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"


class StudyPage(BaseModel):
    total: int
    studies: list[StudySummary]


class Stats(BaseModel):
    studies_by_state: dict[str, int]
    jobs_by_state: dict[str, int]
    delivered_24h: int = Field(description="Studies delivered in the last 24 hours.")
    time_to_pacs_median_seconds: float | None = Field(
        description="Over the jobs done in the last 7 days."
    )
    time_to_pacs_p95_seconds: float | None
    dead_jobs: int
    waiting_for_report: int = Field(
        description="Delivered studies the archives hold no report for yet."
    )
    oldest_waiting_report_seconds: float | None = Field(
        description="How long the longest-waiting of them has been delivered."
    )
    time_to_report_median_seconds: float | None = Field(
        description="Delivery to final report, over reports finalised in the last 7 days."
    )
    time_to_report_p95_seconds: float | None


# -- the derived study view ----------------------------------------------------------------------


def _jobs_per_study() -> Any:
    done = ForwardJob.state == JobState.DONE
    return (
        select(
            ForwardJob.study_instance_uid.label("uid"),
            func.count().label("jobs"),
            func.sum(case((done, 1), else_=0)).label("done"),
            func.sum(case((ForwardJob.state == JobState.DEAD, 1), else_=0)).label(JobState.DEAD),
            func.max(ForwardJob.completed_at).label("last_completed"),
            func.max(case((done, ForwardJob.time_to_pacs_seconds))).label("ttp"),
        )
        .group_by(ForwardJob.study_instance_uid)
        .subquery("job_totals")
    )


class StudyView:
    """Study joined with its job totals and facility; ``state`` is the derived state."""

    def __init__(self) -> None:
        self.jobs = _jobs_per_study()
        jobs = func.coalesce(self.jobs.c.jobs, 0)
        self.state: ColumnElement[str] = case(
            (func.coalesce(self.jobs.c.dead, 0) > 0, "failed"),
            (and_(Study.state == "committed", jobs > 0, self.jobs.c.done == jobs), "delivered"),
            else_=Study.state,
        )
        # As ``devices.study_facility``: a device's record first, else the commit's.
        self.facility: ColumnElement[Any] = func.coalesce(
            StudyFacility.facility, StudyRoute.facility
        )

    def select(self, *columns: Any) -> Any:
        return (
            select(*columns)
            .select_from(Study)
            .outerjoin(self.jobs, self.jobs.c.uid == Study.study_instance_uid)
            .outerjoin(StudyRoute, StudyRoute.study_instance_uid == Study.study_instance_uid)
            .outerjoin(StudyFacility, StudyFacility.study_instance_uid == Study.study_instance_uid)
            .outerjoin(StudyReport, StudyReport.study_instance_uid == Study.study_instance_uid)
        )


def scope_condition(
    facility_col: ColumnElement[Any], scope: list[str] | None
) -> list[ColumnElement[bool]]:
    if scope is None:
        return []
    if not scope:
        return [false()]
    return [facility_col.in_(scope)]


# -- reads ---------------------------------------------------------------------------------------


async def list_studies(
    hub: HubRuntime,
    scope: list[str] | None,
    *,
    state: StudyState | None,
    facility: str | None,
    q: str | None,
    report: ReportFilter | None,
    limit: int,
    offset: int,
) -> StudyPage:
    """Studies of the ``scope`` facilities (None: every one), most recently received first."""
    view = StudyView()
    conditions = scope_condition(view.facility, scope)
    if q is not None:
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conditions.append(
            or_(
                Study.study_description.ilike(like, escape="\\"),
                Study.accession_number.ilike(like, escape="\\"),
                Study.modalities.ilike(like, escape="\\"),
                view.facility.ilike(like, escape="\\"),
                Study.study_instance_uid.startswith(q, autoescape=True),
            )
        )
    if state is not None:
        conditions.append(view.state == state)
    if facility is not None:
        conditions.append(view.facility == facility)
    if report is not None:
        conditions.append(StudyReport.delivered_at.is_not(None))
        conditions.append(StudyReport.report_status == ("none" if report == "waiting" else report))
    async with hub.sessionmaker() as session:
        total = await session.scalar(view.select(func.count()).where(*conditions))
        rows = (
            await session.execute(
                view.select(
                    Study,
                    view.state,
                    view.facility,
                    StudyRoute.agent_received_at,
                    view.jobs.c.last_completed,
                    view.jobs.c.ttp,
                    StudyReport,
                )
                .where(*conditions)
                .order_by(Study.first_received_at.desc(), Study.study_instance_uid.desc())
                .limit(limit)
                .offset(offset)
            )
        ).all()
        by_study: dict[str, list[ForwardJob]] = defaultdict(list)
        if rows:
            for job in await session.scalars(
                select(ForwardJob)
                .where(ForwardJob.study_instance_uid.in_([r[0].study_instance_uid for r in rows]))
                .order_by(ForwardJob.destination)
            ):
                by_study[job.study_instance_uid].append(job)
    studies = []
    for study, derived, fac, agent_received_at, last_completed, ttp, rep in rows:
        studies.append(
            StudySummary(
                study_instance_uid=study.study_instance_uid,
                facility=fac,
                service_level=study.service_level,
                state=derived,
                instance_count=study.instance_count,
                first_received_at=aware_utc(study.first_received_at),
                agent_received_at=aware_utc(agent_received_at),
                committed_at=aware_utc(study.committed_at),
                delivered_at=aware_utc(last_completed) if derived == "delivered" else None,
                time_to_pacs_seconds=ttp,
                clinical_history=study.clinical_history,
                referring_clinician=study.referring_clinician,
                modalities=study.modalities.split("\\") if study.modalities else [],
                study_date=iso_date(study.study_date),
                study_description=study.study_description,
                accession_number=study.accession_number,
                **_report_fields(rep),
                destinations=[
                    DestinationState(
                        name=j.destination,
                        state=j.state,
                        attempts=j.attempts,
                        last_error=j.last_error,
                        completed_at=aware_utc(j.completed_at),
                        time_to_pacs_seconds=j.time_to_pacs_seconds,
                    )
                    for j in by_study[study.study_instance_uid]
                ],
            )
        )
    return StudyPage(total=total or 0, studies=studies)


def _report_fields(rep: StudyReport | None) -> dict[str, Any]:
    if rep is None or rep.delivered_at is None:
        return {}
    at = max((t for t in (rep.preliminary_at, rep.final_at, rep.amended_at) if t), default=None)
    return {
        "report_status": "waiting" if rep.report_status == "none" else rep.report_status,
        "reported_at": aware_utc(at),
        "first_delivered_at": aware_utc(rep.delivered_at),
        "time_to_report_seconds": rep.time_to_report_seconds,
    }


async def stats(hub: HubRuntime, scope: list[str] | None) -> Stats:
    """The dashboard's figures over the studies of the ``scope`` facilities (None: every one)."""
    view = StudyView()
    study_scope = scope_condition(view.facility, scope)
    now = utcnow()
    async with hub.sessionmaker() as session:
        studies = dict(
            (
                await session.execute(
                    view.select(view.state, func.count()).where(*study_scope).group_by(view.state)
                )
            ).all()
        )
        delivered_24h = await session.scalar(
            view.select(func.count()).where(
                *study_scope,
                view.state == "delivered",
                view.jobs.c.last_completed >= now - timedelta(hours=24),
            )
        )
        jobs = dict(
            (
                await session.execute(
                    _scoped_jobs(select(ForwardJob.state, func.count()), scope).group_by(
                        ForwardJob.state
                    )
                )
            ).all()
        )
        times = sorted(
            t
            for t in await session.scalars(
                _scoped_jobs(select(ForwardJob.time_to_pacs_seconds), scope)
                .where(
                    ForwardJob.state == JobState.DONE,
                    ForwardJob.time_to_pacs_seconds.is_not(None),
                    ForwardJob.completed_at >= now - timedelta(days=7),
                )
                .order_by(ForwardJob.completed_at.desc())
                .limit(MAX_TIMING_ROWS)
            )
            if t is not None
        )
        waiting = StudyReport.delivered_at.is_not(None), StudyReport.report_status == "none"
        waiting_count, oldest = (
            await session.execute(
                view.select(func.count(), func.min(StudyReport.delivered_at)).where(
                    *study_scope, *waiting
                )
            )
        ).one()
        report_times = sorted(
            t
            for t in await session.scalars(
                view.select(StudyReport.time_to_report_seconds)
                .where(
                    *study_scope,
                    StudyReport.time_to_report_seconds.is_not(None),
                    StudyReport.final_at >= now - timedelta(days=7),
                )
                .order_by(StudyReport.final_at.desc())
                .limit(MAX_TIMING_ROWS)
            )
            if t is not None
        )
    return Stats(
        studies_by_state={s: int(studies.get(s, 0)) for s in STUDY_STATES},
        jobs_by_state={s: int(jobs.get(s, 0)) for s in JOB_STATES},
        delivered_24h=delivered_24h or 0,
        time_to_pacs_median_seconds=percentile(times, 0.5),
        time_to_pacs_p95_seconds=percentile(times, 0.95),
        dead_jobs=int(jobs.get("dead", 0)),
        waiting_for_report=int(waiting_count or 0),
        oldest_waiting_report_seconds=(
            max((now - oldest).total_seconds(), 0.0) if oldest is not None else None
        ),
        time_to_report_median_seconds=percentile(report_times, 0.5),
        time_to_report_p95_seconds=percentile(report_times, 0.95),
    )


def _scoped_jobs(stmt: Any, scope: list[str] | None) -> Any:
    """``stmt`` over forwarding jobs, limited to the studies of ``scope``'s facilities."""
    if scope is None:
        return stmt
    facility = func.coalesce(StudyFacility.facility, StudyRoute.facility)
    return (
        stmt.select_from(ForwardJob)
        .outerjoin(StudyRoute, StudyRoute.study_instance_uid == ForwardJob.study_instance_uid)
        .outerjoin(StudyFacility, StudyFacility.study_instance_uid == ForwardJob.study_instance_uid)
        .where(*scope_condition(facility, scope))
    )


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-quantile of sorted values, interpolated linearly between ranks; None when empty."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
