"""Studies another facility sent although they belong to a facility already: the admin's list,
and the decision (accept the study for that facility too, or refuse it with a reason)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs_hub.audit import audit
from relaypacs_hub.auth.devices import study_facility
from relaypacs_hub.db.models import Device, Instance, StudyClaim, aware_utc, utcnow
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services.errors import Unknown

ClaimState = Literal["held", "accepted", "refused"]


class ClaimInfo(BaseModel):
    study_instance_uid: str
    facility: str = Field(description="The facility that sent the study second.")
    owner: str | None = Field(description="The facility the study belongs to.")
    owner_instances: int = Field(description="Instances of the study the hub holds.")
    state: ClaimState
    device: str = Field(description="The device that last sent it.")
    attempts: int
    first_seen_at: datetime
    last_seen_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    reason: str


async def _info(session: AsyncSession, claim: StudyClaim) -> ClaimInfo:
    owner = await study_facility(session, claim.study_instance_uid)
    held = await session.scalar(
        select(func.count())
        .select_from(Instance)
        .where(Instance.study_instance_uid == claim.study_instance_uid)
    )
    device = claim.device
    if device.startswith("device:"):  # a device's principal: show the name it enrolled with
        found = await session.get(Device, device.removeprefix("device:"))
        device = found.name if found is not None else device
    return ClaimInfo(
        study_instance_uid=claim.study_instance_uid,
        facility=claim.facility,
        owner=owner,
        owner_instances=int(held or 0),
        state=claim.state,  # type: ignore[arg-type]
        device=device,
        attempts=claim.attempts,
        first_seen_at=aware_utc(claim.first_seen_at) or claim.first_seen_at,
        last_seen_at=aware_utc(claim.last_seen_at) or claim.last_seen_at,
        decided_by=claim.decided_by,
        decided_at=aware_utc(claim.decided_at),
        reason=claim.reason,
    )


async def list_claims(hub: HubRuntime, state: ClaimState | None) -> list[ClaimInfo]:
    """Studies sent by a second facility, held ones first (newest first within each state)."""
    query = select(StudyClaim).order_by(StudyClaim.state != "held", StudyClaim.last_seen_at.desc())
    if state is not None:
        query = query.where(StudyClaim.state == state)
    async with hub.sessionmaker() as session:
        return [await _info(session, c) for c in await session.scalars(query.limit(500))]


async def decide(
    hub: HubRuntime, actor: str, study_uid: str, facility: str, accept: bool, reason: str
) -> ClaimInfo:
    """Accept the study for ``facility`` too, or refuse it with ``reason``."""
    async with hub.sessionmaker() as session, session.begin():
        claim = await session.get(StudyClaim, (study_uid, facility))
        if claim is None:
            raise Unknown("unknown_claim", "no facility sent this study second")
        claim.state = "accepted" if accept else "refused"
        claim.reason = reason.strip()
        claim.decided_by = actor
        claim.decided_at = utcnow()
        await audit(session, actor, f"study_claim_{claim.state}", study_uid, facility=facility)
        return await _info(session, claim)
