"""The dashboard's analytics, and a CSV of the studies behind them (``services/analytics.py``
computes both over UTC days of first receipt). For radiologists and admins, scoped like the study
list (``facility_scope``). No patient data: UIDs, facilities, modalities, states and times only.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from relaypacs_hub.api.deps import State, StudyBrowser, facility_scope
from relaypacs_hub.services import analytics as analytics_service
from relaypacs_hub.services.analytics import Analytics, Bucket

router = APIRouter(prefix="/api/v1", tags=["dashboard"])

MAX_DAYS = 366


def _range(start: date | None, end: date | None) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    end = end or today
    # The default start and the day after the end must be dates too (a 422, not an overflow).
    if end == date.max or (start is None and end < date.min + timedelta(days=29)):
        raise HTTPException(422, "a date out of range")
    start = start or end - timedelta(days=29)
    if start > end:
        raise HTTPException(422, "start is after end")
    if (end - start).days + 1 > MAX_DAYS:
        raise HTTPException(422, f"a range of at most {MAX_DAYS} days")
    return start, end


@router.get("/analytics", response_model=Analytics)
async def analytics(
    state: State,
    who: StudyBrowser,
    start: date | None = None,
    end: date | None = None,
    bucket: Bucket = "day",
) -> Analytics:
    """Delivery analytics for ``start``..``end`` (UTC days, both included; default the last 30
    days), volume by ``bucket`` (day or week)."""
    start, end = _range(start, end)
    return await analytics_service.figures(state, facility_scope(who), start, end, bucket)


CSV_COLUMNS = [
    "study_instance_uid",
    "received_at",
    "facility",
    "modalities",
    "service_level",
    "state",
    "instances",
    "time_to_pacs_seconds",
    "time_to_report_seconds",
]


@router.get(
    "/analytics/studies.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per study."}},
)
async def analytics_csv(
    state: State,
    who: StudyBrowser,
    start: Annotated[date | None, Query()] = None,
    end: Annotated[date | None, Query()] = None,
) -> Response:
    """The studies behind the analytics of ``start``..``end``, one row each (no patient data)."""
    start, end = _range(start, end)
    rows = await analytics_service.study_rows(state, facility_scope(who), start, end)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(
            [
                r["study_instance_uid"],
                r["received_at"].isoformat(),
                _cell(r["facility"]),
                "\\".join(r["modalities"]),
                r["service_level"],
                r["state"],
                r["instances"],
                "" if r["time_to_pacs_seconds"] is None else f"{r['time_to_pacs_seconds']:.1f}",
                "" if r["time_to_report_seconds"] is None else f"{r['time_to_report_seconds']:.1f}",
            ]
        )
    name = f"relaypacs-studies-{start.isoformat()}-{end.isoformat()}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _cell(text: str) -> str:
    """A spreadsheet never runs a cell as a formula (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
