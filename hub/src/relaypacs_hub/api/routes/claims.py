"""Studies another facility sent although they belong to a facility already: the admin's list,
and the decision (accept the study for that facility too, or refuse it with a reason)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from relaypacs_hub.api.deps import AdminAuth, State
from relaypacs_hub.services import claims
from relaypacs_hub.services.claims import ClaimInfo, ClaimState

router = APIRouter(prefix="/api/v1/study-claims", tags=["studies"])


class Decision(BaseModel):
    decision: Literal["accept", "refuse"]
    reason: str = Field(
        default="",
        max_length=500,
        description="Shown to the facility's agent when refused (say what to do instead).",
    )


@router.get("", response_model=list[ClaimInfo])
async def list_claims(
    state: State,
    _auth: AdminAuth,
    claim_state: ClaimState | None = None,
) -> list[ClaimInfo]:
    """Studies sent by a second facility, held ones first (newest first within each state)."""
    return await claims.list_claims(state, claim_state)


@router.post("/{study_uid}/{facility}", response_model=ClaimInfo)
async def decide_claim(
    study_uid: str, facility: str, body: Decision, state: State, who: AdminAuth
) -> ClaimInfo:
    """Accept the study for this facility too (its agent sends it at its next try, and its
    people read the study's state), or refuse it: the agent stops and shows the reason."""
    return await claims.decide(
        state, who.name, study_uid, facility, body.decision == "accept", body.reason
    )
