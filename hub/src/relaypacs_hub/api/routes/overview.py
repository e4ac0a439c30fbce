"""The dashboard's read API: the list of studies with where each stands, and delivery statistics.

For radiologists and admins (and the admin machine token), never agents. A user who is not an admin
sees only the studies of the facilities listed for them (``facility_scope``). Answers carry UIDs,
facilities, states and times: the hub keeps no patient names or IDs in its database. The
derived study state is ``services/overview.py``'s.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from relaypacs_hub.api.deps import State, StudyBrowser, facility_scope
from relaypacs_hub.services import overview
from relaypacs_hub.services.overview import ReportFilter, Stats, StudyPage, StudyState

router = APIRouter(prefix="/api/v1", tags=["dashboard"])

# The offset is a SQL integer: beyond it is a 422, not a driver overflow (a 500).
MAX_OFFSET = 2**31 - 1
# A facility is free text set by admins; NUL is the one character PostgreSQL text refuses.
Facility = Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[^\x00]+$")]


@router.get("/studies", response_model=StudyPage)
async def list_studies(
    state: State,
    who: StudyBrowser,
    study_state: Annotated[StudyState | None, Query(alias="state")] = None,
    facility: Facility = None,
    q: Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[^\x00]+$")] = None,
    report: ReportFilter | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> StudyPage:
    """Studies, most recently received first, each with its destinations. ``?state=failed``
    lists those with a dead forwarding job; ``?facility=`` one facility's; ``?q=`` searches the
    description, accession number, modality, facility and the start of the Study UID;
    ``?report=waiting`` lists delivered studies without a report yet (or ``preliminary``,
    ``final``, ``amended``)."""
    return await overview.list_studies(
        state,
        facility_scope(who),
        state=study_state,
        facility=facility,
        q=q,
        report=report,
        limit=limit,
        offset=offset,
    )


@router.get("/stats", response_model=Stats)
async def stats(state: State, who: StudyBrowser) -> Stats:
    """Counts of studies and jobs by state, studies delivered in the last 24 hours, the
    median and 95th percentile time to PACS over the last 7 days, the delivered studies waiting
    for a report and the time to report."""
    return await overview.stats(state, facility_scope(who))
