"""Enrolled agents, as the hub keeps them: the device list, the verifier feed an agent checks its
people with while the WAN is down, and the agents' heartbeats."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel, Field
from sqlalchemy import select

from relaypacs_hub.audit import audit
from relaypacs_hub.auth import devices
from relaypacs_hub.auth.service import facilities_of
from relaypacs_hub.db.models import AgentHeartbeat, Device, User, aware_utc, utcnow
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services.errors import Unknown
from relaypacs_shared.wire import Heartbeat


class DeviceInfo(BaseModel):
    id: str
    facility: str
    name: str
    created_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, d: Device) -> DeviceInfo:
        return cls(
            id=d.id,
            facility=d.facility,
            name=d.name,
            created_at=d.created_at,
            last_seen_at=d.last_seen_at,
            revoked_at=d.revoked_at,
        )


class Verifier(BaseModel):
    username: str
    role: str
    facilities: list[str]
    password_hash: str = Field(description="The argon2id hash as the hub stores it.")
    totp_secret: str | None = Field(
        description="Base32 TOTP secret, only when the user has confirmed TOTP; else null."
    )
    totp_required: bool = Field(
        description="The user's role must use a second factor (`RELAYPACS_HUB_REQUIRE_TOTP_ROLES`)."
    )
    totp_last_step: int | None = Field(
        default=None,
        description="The RFC 6238 time step of the last code accepted for this user at the hub "
        "or at any agent: an agent accepts only a later one, so a code works once everywhere.",
    )


class VerifierFeed(BaseModel):
    generated_at: datetime
    users: list[Verifier]


async def list_devices(hub: HubRuntime) -> list[DeviceInfo]:
    return [DeviceInfo.of(d) for d in await devices.list_devices(hub.sessionmaker)]


async def revoke(hub: HubRuntime, actor: str, device_id: str, source: str | None) -> DeviceInfo:
    try:
        d = await devices.revoke(hub.sessionmaker, actor, device_id, source)
    except LookupError as exc:
        raise Unknown("unknown_device", "no such device") from exc
    return DeviceInfo.of(d)


async def verifier_feed(
    hub: HubRuntime, facility: str | None, reader: str, source: str | None
) -> VerifierFeed:
    """The enabled users of ``facility`` (None: every user) with their password hashes and
    confirmed TOTP secrets; the read is audited."""
    required = hub.settings.totp_required_roles
    async with hub.sessionmaker() as session:
        users = list(
            await session.scalars(
                select(User).where(User.disabled.is_(False)).order_by(User.username)
            )
        )
    feed = [
        Verifier(
            username=u.username,
            role=u.role,
            facilities=facilities_of(u),
            password_hash=u.password_hash,
            totp_secret=u.totp_secret if u.totp_enabled else None,
            totp_required=u.role in required,
            totp_last_step=u.totp_last_step if u.totp_enabled else None,
        )
        for u in users
        if facility is None or facility in facilities_of(u)
    ]
    await audit(
        hub.sessionmaker,
        reader,
        "device.verifiers_read",
        facility or "*",
        source=source,
        users=len(feed),
    )
    return VerifierFeed(generated_at=datetime.now(UTC), users=feed)


class HeartbeatAnswer(BaseModel):
    agent: str = Field(description="The name the hub exports this agent's metrics under.")
    facility: str | None
    received_at: datetime


async def record_heartbeat(
    hub: HubRuntime, body: Heartbeat, device_id: str | None, device_facility: str | None
) -> HeartbeatAnswer:
    """Keep the latest report per agent: an enrolled device (``device_id``) is named and placed
    by its enrollment; an agent on the legacy token by what it reports."""
    if device_id is not None:
        async with hub.sessionmaker() as session:
            device = await session.get(Device, device_id)
        key, name = device_id, device.name if device else body.name
        facility: str | None = device_facility
    else:
        key, name, facility = f"unenrolled:{body.name}", body.name, body.facility
    now = utcnow()
    contact = body.last_hub_contact_at
    if contact is not None and contact.tzinfo is not None:
        contact = contact.astimezone(UTC).replace(tzinfo=None)
    async with hub.sessionmaker() as session, session.begin():
        row = await session.get(AgentHeartbeat, key, with_for_update=True)
        if row is None:
            row = AgentHeartbeat(agent_key=key)
            session.add(row)
        row.device_id = device_id
        row.facility = facility
        row.name = name
        row.version = body.version
        row.received_at = now
        row.backlog_studies = body.backlog_studies
        row.backlog_bytes = body.backlog_bytes
        row.oldest_waiting_seconds = body.oldest_waiting_seconds
        row.disk_free_bytes = body.disk_free_bytes
        row.disk_reserve_bytes = body.disk_reserve_bytes
        row.quarantine_json = json.dumps(body.quarantine, sort_keys=True)
        row.last_hub_contact_at = contact
    return HeartbeatAnswer(agent=name, facility=facility, received_at=aware_utc(now) or now)
