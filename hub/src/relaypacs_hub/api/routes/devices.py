"""Agent enrollment: admins issue one-time codes, agents exchange them for a device credential,
renew it, and admins list and revoke devices."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from relaypacs_hub.api.deps import AdminAuth, AgentAuth, DeviceAuth, PublicAccess, State
from relaypacs_hub.auth import devices
from relaypacs_hub.ratelimit import RateLimited, enforce, enroll_rule
from relaypacs_hub.services import devices as device_service
from relaypacs_hub.services.devices import DeviceInfo, HeartbeatAnswer, VerifierFeed
from relaypacs_shared.wire import Heartbeat

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


class CodeRequest(BaseModel):
    facility: str = Field(min_length=1, max_length=64)
    ttl_minutes: float = Field(default=60.0, gt=0, le=60 * 24 * 30)


class CodeAnswer(BaseModel):
    code: str = Field(description="The one-time enrollment code; shown only now.")
    facility: str
    expires_at: datetime


class EnrollRequest(BaseModel):
    code: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=128)


class CredentialAnswer(BaseModel):
    device_id: str
    facility: str
    secret: str = Field(description="Shown only now; sent as `Bearer rpd_<device_id>.<secret>`.")


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/enrollment-codes", response_model=CodeAnswer, status_code=status.HTTP_201_CREATED)
async def issue_code(
    body: CodeRequest, state: State, who: AdminAuth, request: Request
) -> CodeAnswer:
    """Issue a one-time enrollment code for a facility (shown once, stored hashed)."""
    code, expires_at = await devices.issue_code(
        state.sessionmaker, who.name, body.facility, body.ttl_minutes, _source(request)
    )
    return CodeAnswer(code=code, facility=body.facility, expires_at=expires_at)


@router.post("/enroll", response_model=CredentialAnswer, status_code=status.HTTP_201_CREATED)
async def enroll(
    body: EnrollRequest, state: State, _auth: PublicAccess, request: Request
) -> CredentialAnswer:
    """Exchange a one-time code for a device credential; the code is used up.

    Rate limited per client address (429 with ``Retry-After``): codes cannot be guessed at
    speed, and the audit log is not flooded with failed attempts."""
    try:
        await enforce(state.limiter, enroll_rule(state.settings), _source(request) or "unknown")
    except RateLimited as exc:
        raise HTTPException(429, exc.body, {"Retry-After": exc.retry_after_header}) from exc
    try:
        device, secret = await devices.enroll(
            state.sessionmaker, body.code, body.name, _source(request)
        )
    except devices.EnrollmentError as exc:
        raise HTTPException(400, {"code": f"code_{exc.reason}", "detail": exc.detail}) from exc
    return CredentialAnswer(device_id=device.id, facility=device.facility, secret=secret)


@router.post("/renew", response_model=CredentialAnswer)
async def renew(state: State, who: DeviceAuth, request: Request) -> CredentialAnswer:
    """A new secret for the calling device; the old one stops working at once."""
    assert who.device_id is not None
    try:
        secret = await devices.renew(state.sessionmaker, who.device_id, _source(request))
    except LookupError as exc:  # revoked between authentication and now
        raise HTTPException(401, {"code": "unauthorized", "detail": "device revoked"}) from exc
    return CredentialAnswer(
        device_id=who.device_id, facility=who.agent_facility or "", secret=secret
    )


@router.get("/verifiers", response_model=VerifierFeed)
async def verifiers(
    state: State, who: AgentAuth, request: Request, response: Response
) -> VerifierFeed:
    """What an agent needs to check its facility's people at the agent while the WAN is down:
    password hashes and TOTP secrets, never a plaintext. An enrolled device gets the users who
    belong to its facility (a user's facility list has no wildcard: an admin too appears only at
    the facilities listed for them); the legacy agent token (or the open development mode) gets
    every user. Disabled users are left out. Every read is audited."""
    response.headers["Cache-Control"] = "no-store"
    return await device_service.verifier_feed(state, who.agent_facility, who.name, _source(request))


class TotpStepClaim(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    step: int = Field(ge=0, description="The RFC 6238 time step of the code a person just used.")


class TotpStepAnswer(BaseModel):
    accepted: bool = Field(
        description="True: the step was later than any used for this user, and is now the "
        "last one. False: a code of this step (or a later one) was already used: refuse it."
    )


@router.post("/totp-steps", response_model=TotpStepAnswer)
async def claim_totp_step(
    body: TotpStepClaim, state: State, who: AgentAuth, request: Request
) -> TotpStepAnswer:
    """An agent claims the time step of a TOTP code used at its LAN login, so the same code
    cannot open a session at the hub (or at another agent) afterwards, and a code already used
    at the hub is refused at the agent. Only for users of the device's facility."""
    accepted = await state.auth.claim_totp_step(
        body.username, body.step, who.agent_facility, who.name, _source(request)
    )
    if accepted is None:
        raise HTTPException(404, {"code": "unknown_user", "detail": "no such user with TOTP here"})
    return TotpStepAnswer(accepted=accepted)


@router.post("/heartbeat", response_model=HeartbeatAnswer)
async def heartbeat(body: Heartbeat, state: State, who: AgentAuth) -> HeartbeatAnswer:
    """An agent's health report (backlog, oldest waiting study, disk free against its reserve,
    quarantine by reason, last hub contact, version). The hub keeps the latest per agent and
    exports it at `/metrics`. An enrolled device is named and placed by its enrollment; an
    agent on the legacy token (or the open development mode) by what it reports."""
    return await device_service.record_heartbeat(state, body, who.device_id, who.agent_facility)


@router.get("", response_model=list[DeviceInfo])
async def list_devices(state: State, _auth: AdminAuth) -> list[DeviceInfo]:
    """Every enrolled device, revoked ones included."""
    return await device_service.list_devices(state)


@router.post("/{device_id}/revoke", response_model=DeviceInfo)
async def revoke(device_id: str, state: State, who: AdminAuth, request: Request) -> DeviceInfo:
    """Revoke a device: its credential is refused (401) from now on."""
    return await device_service.revoke(state, who.name, device_id, _source(request))
