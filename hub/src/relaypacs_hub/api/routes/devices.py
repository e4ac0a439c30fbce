"""Agent enrollment: admins issue one-time codes, agents exchange them for a device credential,
renew it, and admins list and revoke devices."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from relaypacs_hub.api.deps import AdminAuth, DeviceAuth, PublicAccess, State
from relaypacs_hub.auth import devices

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


class DeviceInfo(BaseModel):
    id: str
    facility: str
    name: str
    created_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None


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
    """Exchange a one-time code for a device credential; the code is used up."""
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


@router.get("", response_model=list[DeviceInfo])
async def list_devices(state: State, _auth: AdminAuth) -> list[DeviceInfo]:
    """Every enrolled device, revoked ones included."""
    return [
        DeviceInfo(
            id=d.id,
            facility=d.facility,
            name=d.name,
            created_at=d.created_at,
            last_seen_at=d.last_seen_at,
            revoked_at=d.revoked_at,
        )
        for d in await devices.list_devices(state.sessionmaker)
    ]


@router.post("/{device_id}/revoke", response_model=DeviceInfo)
async def revoke(device_id: str, state: State, who: AdminAuth, request: Request) -> DeviceInfo:
    """Revoke a device: its credential is refused (401) from now on."""
    try:
        d = await devices.revoke(state.sessionmaker, who.name, device_id, _source(request))
    except LookupError as exc:
        raise HTTPException(404, {"code": "unknown_device", "detail": "no such device"}) from exc
    return DeviceInfo(
        id=d.id,
        facility=d.facility,
        name=d.name,
        created_at=d.created_at,
        last_seen_at=d.last_seen_at,
        revoked_at=d.revoked_at,
    )
