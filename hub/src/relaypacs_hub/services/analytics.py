"""The dashboard's analytics: volume over time by facility and modality, delivery success, time
to PACS and to report (median and 95th percentile by facility and service level), the modality
mix, quarantine reasons the agents report, and the agent fleet; and a CSV of the studies behind
them, over a scope of facilities like the study list's.

The range is over when the hub first received a study (UTC days). Figures are computed in
Python over at most ``MAX_STUDIES`` studies of the range (percentiles differ between SQLite and
PostgreSQL). No patient data: UIDs, facilities, modalities, states and times only.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import date, datetime, time, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select

from relaypacs_hub.db.models import AgentHeartbeat, Study, StudyReport, aware_utc, utcnow
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services.overview import StudyView, percentile, scope_condition

MAX_STUDIES = 200_000
Bucket = Literal["day", "week"]


class Timing(BaseModel):
    n: int
    median_seconds: float | None
    p95_seconds: float | None


class VolumePoint(BaseModel):
    period: str = Field(description="First day of the day or (ISO, Monday) week, YYYY-MM-DD.")
    facility: str
    modality: str
    studies: int
    instances: int


class FacilityFigures(BaseModel):
    facility: str
    studies: int
    delivered: int
    failed: int
    in_progress: int
    success_rate: float | None = Field(
        description="delivered / (delivered + failed); null while none has finished."
    )
    time_to_pacs: dict[str, Timing] = Field(description="By service level: routine, stat.")
    time_to_report: Timing


class ModalityShare(BaseModel):
    modality: str
    studies: int


class QuarantineCount(BaseModel):
    facility: str
    reason: str
    files: int


class AgentHealth(BaseModel):
    name: str
    facility: str | None
    version: str
    last_seen_at: datetime
    silent_seconds: float
    backlog_studies: int
    backlog_bytes: int
    oldest_waiting_seconds: float | None
    disk_below_reserve: bool


class Analytics(BaseModel):
    start: date
    end: date
    bucket: Bucket
    studies: int
    instances: int
    delivered: int
    failed: int
    success_rate: float | None
    time_to_pacs: dict[str, Timing]
    time_to_report: Timing
    volume: list[VolumePoint]
    facilities: list[FacilityFigures]
    modalities: list[ModalityShare]
    quarantine: list[QuarantineCount]
    agents: list[AgentHealth]


def _period(day: date, bucket: Bucket) -> str:
    if bucket == "week":
        day = day - timedelta(days=day.weekday())
    return day.isoformat()


def _timing(values: list[float]) -> Timing:
    ordered = sorted(values)
    return Timing(
        n=len(ordered),
        median_seconds=percentile(ordered, 0.5),
        p95_seconds=percentile(ordered, 0.95),
    )


def _rate(delivered: int, failed: int) -> float | None:
    return delivered / (delivered + failed) if delivered + failed else None


async def study_rows(
    hub: HubRuntime, scope: list[str] | None, start: date, end: date
) -> list[dict[str, Any]]:
    """The studies first received in ``start``..``end`` (UTC days), one dict each."""
    view = StudyView()
    first = datetime.combine(start, time.min)
    last = datetime.combine(end + timedelta(days=1), time.min)
    conditions = [
        *scope_condition(view.facility, scope),
        Study.first_received_at >= first,
        Study.first_received_at < last,
    ]
    async with hub.sessionmaker() as session:
        rows = (
            await session.execute(
                view.select(
                    Study,
                    view.state,
                    view.facility,
                    view.jobs.c.ttp,
                    StudyReport.time_to_report_seconds,
                )
                .where(*conditions)
                .order_by(Study.first_received_at)
                .limit(MAX_STUDIES)
            )
        ).all()
    return [
        {
            "study_instance_uid": study.study_instance_uid,
            "received_at": aware_utc(study.first_received_at) or study.first_received_at,
            "facility": fac or "(unknown)",
            "modalities": study.modalities.split("\\") if study.modalities else [],
            "service_level": study.service_level,
            "state": derived,
            "instances": study.instance_count,
            "time_to_pacs_seconds": ttp if derived == "delivered" else None,
            "time_to_report_seconds": ttr,
        }
        for study, derived, fac, ttp, ttr in rows
    ]


async def figures(
    hub: HubRuntime, scope: list[str] | None, start: date, end: date, bucket: Bucket
) -> Analytics:
    """The analytics of ``start``..``end`` over the studies of the ``scope`` facilities."""
    rows = await study_rows(hub, scope, start, end)
    volume: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    per_fac: dict[str, list[dict[str, Any]]] = defaultdict(list)
    mix: Counter[str] = Counter()
    for r in rows:
        modality = r["modalities"][0] if r["modalities"] else "(unknown)"
        key = (_period(r["received_at"].date(), bucket), r["facility"], modality)
        volume[key][0] += 1
        volume[key][1] += r["instances"]
        per_fac[r["facility"]].append(r)
        for m in r["modalities"] or ["(unknown)"]:
            mix[m] += 1

    def ttp_by_level(items: list[dict[str, Any]]) -> dict[str, Timing]:
        return {
            level: _timing(
                [
                    r["time_to_pacs_seconds"]
                    for r in items
                    if r["service_level"] == level and r["time_to_pacs_seconds"] is not None
                ]
            )
            for level in ("routine", "stat")
        }

    def ttr(items: list[dict[str, Any]]) -> Timing:
        return _timing(
            [r["time_to_report_seconds"] for r in items if r["time_to_report_seconds"] is not None]
        )

    facilities = []
    for fac, items in sorted(per_fac.items()):
        states = Counter(r["state"] for r in items)
        facilities.append(
            FacilityFigures(
                facility=fac,
                studies=len(items),
                delivered=states["delivered"],
                failed=states["failed"],
                in_progress=len(items) - states["delivered"] - states["failed"],
                success_rate=_rate(states["delivered"], states["failed"]),
                time_to_pacs=ttp_by_level(items),
                time_to_report=ttr(items),
            )
        )
    totals = Counter(r["state"] for r in rows)
    quarantine, agents = await _fleet(hub, scope)
    return Analytics(
        start=start,
        end=end,
        bucket=bucket,
        studies=len(rows),
        instances=sum(r["instances"] for r in rows),
        delivered=totals["delivered"],
        failed=totals["failed"],
        success_rate=_rate(totals["delivered"], totals["failed"]),
        time_to_pacs=ttp_by_level(rows),
        time_to_report=ttr(rows),
        volume=[
            VolumePoint(period=p, facility=f, modality=m, studies=v[0], instances=v[1])
            for (p, f, m), v in sorted(volume.items())
        ],
        facilities=facilities,
        modalities=[ModalityShare(modality=m, studies=n) for m, n in mix.most_common()],
        quarantine=quarantine,
        agents=agents,
    )


async def _fleet(
    hub: HubRuntime, scope: list[str] | None
) -> tuple[list[QuarantineCount], list[AgentHealth]]:
    """Open quarantine by facility and reason, and each agent's health, from the heartbeats."""
    query = select(AgentHeartbeat).order_by(AgentHeartbeat.facility, AgentHeartbeat.name)
    if scope is not None:
        query = query.where(AgentHeartbeat.facility.in_(scope or [""]))
    async with hub.sessionmaker() as session:
        beats = list(await session.scalars(query))
    now = utcnow()
    reasons: Counter[tuple[str, str]] = Counter()
    agents = []
    for b in beats:
        try:
            open_counts = json.loads(b.quarantine_json or "{}")
        except ValueError:
            open_counts = {}
        for reason, n in open_counts.items():
            if isinstance(n, int) and n > 0:
                reasons[(b.facility or "(unknown)", str(reason))] += n
        disk_low = (
            b.disk_free_bytes is not None
            and b.disk_reserve_bytes is not None
            and b.disk_free_bytes < b.disk_reserve_bytes
        )
        agents.append(
            AgentHealth(
                name=b.name,
                facility=b.facility,
                version=b.version,
                last_seen_at=aware_utc(b.received_at) or b.received_at,
                silent_seconds=max(0.0, (now - b.received_at).total_seconds()),
                backlog_studies=b.backlog_studies,
                backlog_bytes=b.backlog_bytes,
                oldest_waiting_seconds=b.oldest_waiting_seconds,
                disk_below_reserve=disk_low,
            )
        )
    quarantine = [
        QuarantineCount(facility=f, reason=r, files=n)
        for (f, r), n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return quarantine, agents
