"""Agent enrollment: one-time codes, device credentials, renewal, revocation, study facilities.

An admin issues a one-time code for a facility; an agent exchanges it once for a device id and a
secret, and then authenticates with ``Authorization: Bearer rpd_<device_id>.<secret>``. Only the
sha256 of codes and secrets is stored (both are 256-bit random, so a fast hash is enough); they are
compared in constant time. Enrollment, renewal and revocation are audited, never with a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.audit import audit
from relaypacs_hub.db.models import (
    Device,
    EnrollmentCode,
    Study,
    StudyClaim,
    StudyFacility,
    StudyRoute,
    utcnow,
)

CREDENTIAL_PREFIX = "rpd_"
# Recording last_seen_at on every request would write on every upload: once a minute is enough.
_SEEN_EVERY = timedelta(seconds=60)


class EnrollmentError(Exception):
    """A refused code: ``reason`` is ``unknown``, ``expired`` or ``used``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class FacilityMismatch(Exception):
    """The study belongs to another facility than the calling device."""


class StudyHeld(FacilityMismatch):
    """The study belongs to another facility: this facility's copy waits for an admin
    (``state`` ``held``), or an admin refused it (``refused``, with the admin's ``reason``)."""

    def __init__(self, study_uid: str, state: str, reason: str = "") -> None:
        super().__init__(study_uid)
        self.state = state
        self.reason = reason


@dataclass(frozen=True)
class DeviceIdentity:
    id: str
    facility: str
    name: str


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def credential(device_id: str, secret: str) -> str:
    return f"{CREDENTIAL_PREFIX}{device_id}.{secret}"


async def issue_code(
    sessionmaker: async_sessionmaker[AsyncSession],
    actor: str,
    facility: str,
    ttl_minutes: float,
    source: str | None = None,
) -> tuple[str, datetime]:
    """A new one-time code for ``facility`` (returned once, stored hashed) and its expiry."""
    code = secrets.token_urlsafe(24)
    expires_at = utcnow() + timedelta(minutes=ttl_minutes)
    async with sessionmaker() as session, session.begin():
        session.add(
            EnrollmentCode(
                code_hash=_sha256(code), facility=facility, created_by=actor, expires_at=expires_at
            )
        )
        await audit(
            session,
            actor,
            "device.code_issued",
            facility,
            source=source,
            ttl_minutes=ttl_minutes,
        )
    return code, expires_at


async def enroll(
    sessionmaker: async_sessionmaker[AsyncSession],
    code: str,
    name: str,
    source: str | None = None,
) -> tuple[DeviceIdentity, str]:
    """Use up ``code`` and create a device; returns it and its secret (shown once)."""
    now = utcnow()
    async with sessionmaker() as session, session.begin():
        row = await session.scalar(
            select(EnrollmentCode).where(EnrollmentCode.code_hash == _sha256(code))
        )
        reason = None
        if row is None:
            reason, detail = "unknown", "unknown enrollment code"
        elif row.used_at is not None:
            reason, detail = "used", "this enrollment code was used already; ask for a new one"
        elif row.expires_at <= now:
            reason, detail = "expired", "this enrollment code has expired; ask for a new one"
        if reason is not None:
            await audit(
                session,
                "anonymous",
                "device.enroll",
                name[:128],
                "minor_failure",
                source,
                reason=reason,
            )
        else:
            assert row is not None
            device_id = uuid.uuid4().hex
            secret = secrets.token_urlsafe(32)
            row.used_at, row.device_id = now, device_id
            session.add(
                Device(
                    id=device_id,
                    facility=row.facility,
                    name=name,
                    secret_hash=_sha256(secret),
                    created_at=now,
                )
            )
            await audit(
                session,
                f"device:{device_id}",
                "device.enrolled",
                device_id,
                source=source,
                facility=row.facility,
                name=name,
            )
    if reason is not None or row is None:
        raise EnrollmentError(reason or "unknown", detail)
    return DeviceIdentity(device_id, row.facility, name), secret


async def authenticate(
    sessionmaker: async_sessionmaker[AsyncSession], token: str
) -> DeviceIdentity | None:
    """The device a ``rpd_<id>.<secret>`` credential belongs to; None if unknown, wrong or
    revoked."""
    if not token.startswith(CREDENTIAL_PREFIX):
        return None
    device_id, sep, secret = token[len(CREDENTIAL_PREFIX) :].partition(".")
    if not sep or not device_id or not secret or len(device_id) > 32:
        return None
    async with sessionmaker() as session:
        device = await session.get(Device, device_id)
        # Compare even for an unknown device, so timing does not tell which ids exist.
        stored = device.secret_hash if device is not None else "0" * 64
        ok = hmac.compare_digest(stored.encode(), _sha256(secret).encode())
        if device is None or not ok or device.revoked_at is not None:
            return None
        now = utcnow()
        if device.last_seen_at is None or now - device.last_seen_at > _SEEN_EVERY:
            device.last_seen_at = now
            await session.commit()
        return DeviceIdentity(device.id, device.facility, device.name)


async def renew(
    sessionmaker: async_sessionmaker[AsyncSession], device_id: str, source: str | None = None
) -> str:
    """A new secret for the device; the old one stops working at once."""
    secret = secrets.token_urlsafe(32)
    async with sessionmaker() as session, session.begin():
        device = await session.get(Device, device_id)
        if device is None or device.revoked_at is not None:
            raise LookupError(device_id)
        device.secret_hash = _sha256(secret)
        await audit(session, f"device:{device_id}", "device.renewed", device_id, source=source)
    return secret


async def revoke(
    sessionmaker: async_sessionmaker[AsyncSession],
    actor: str,
    device_id: str,
    source: str | None = None,
) -> Device:
    async with sessionmaker() as session, session.begin():
        device = await session.get(Device, device_id)
        if device is None:
            raise LookupError(device_id)
        if device.revoked_at is None:
            device.revoked_at = utcnow()
        await audit(
            session, actor, "device.revoked", device_id, source=source, facility=device.facility
        )
        return device


async def list_devices(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Device]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(Device).order_by(Device.created_at)))


async def study_facility(session: AsyncSession, study_uid: str) -> str | None:
    """The facility recorded for a study: by a device, else by a commit's routing record."""
    owner = await session.get(StudyFacility, study_uid)
    if owner is not None:
        return owner.facility
    route = await session.get(StudyRoute, study_uid)
    return route.facility if route is not None else None


async def claim_study(
    sessionmaker: async_sessionmaker[AsyncSession],
    study_uid: str,
    facility: str,
    device: str = "",
    unclaimed_after_hours: float = 24.0,
) -> None:
    """Record ``facility`` as the study's at its first manifest or instance from a device.

    A study that belongs to another facility is held for an admin (``StudyHeld``): a patient
    transferred with their images, or two studies sharing a UID, is a decision for a person,
    never a silent merge nor an endless refusal. An admin accepts it for the second facility
    too, or refuses it with a reason the agent shows. A facility's record with no instance
    behind it (a manifest that was never followed, or a device squatting a UID) gives way to
    the next facility after ``unclaimed_after_hours``."""
    for _ in range(3):
        async with sessionmaker() as session:
            recorded = await study_facility(session, study_uid)
            held: StudyHeld | None = None
            if recorded is None:
                session.add(StudyFacility(study_instance_uid=study_uid, facility=facility))
            elif recorded == facility:
                return
            else:
                held = await _hold(session, study_uid, recorded, facility, device,
                                   timedelta(hours=unclaimed_after_hours))  # fmt: skip
            try:
                await session.commit()
            except IntegrityError:  # another request recorded it first: check against it
                await session.rollback()
                continue
            if held is not None:
                raise held
            return
    raise FacilityMismatch(study_uid)


async def _hold(
    session: AsyncSession,
    study_uid: str,
    owner_facility: str,
    facility: str,
    device: str,
    unclaimed_after: timedelta,
) -> StudyHeld | None:
    """The study is another facility's: None if this facility may send it anyway (accepted by
    an admin, or the other facility's record was never followed by an instance), else the
    held (or refused) claim, recorded for the admin's list."""
    claim = await session.get(StudyClaim, (study_uid, facility))
    if claim is not None and claim.state == "accepted":
        return None
    now = utcnow()
    owner = await session.get(StudyFacility, study_uid)
    if (
        owner is not None
        and owner.recorded_at < now - unclaimed_after
        and await session.get(Study, study_uid) is None
    ):
        await audit(
            session, device or "device", "study_claim_unclaimed", study_uid,
            previous=owner.facility, facility=facility,
        )  # fmt: skip
        owner.facility, owner.recorded_at = facility, now
        return None
    if claim is None:
        session.add(
            StudyClaim(
                study_instance_uid=study_uid, facility=facility, state="held",
                device=device[:128], attempts=1, first_seen_at=now, last_seen_at=now, reason="",
            )
        )  # fmt: skip
        await audit(
            session, device or "device", "study_claim_held", study_uid,
            owner=owner_facility, facility=facility,
        )  # fmt: skip
        return StudyHeld(study_uid, "held")
    claim.attempts += 1
    claim.last_seen_at = now
    claim.device = device[:128] or claim.device
    return StudyHeld(study_uid, claim.state, claim.reason)


async def study_facilities(session: AsyncSession, study_uid: str) -> set[str]:
    """Every facility that may read the study: its own, and those an admin accepted it for."""
    owner = await study_facility(session, study_uid)
    accepted = await session.scalars(
        select(StudyClaim.facility)
        .where(StudyClaim.study_instance_uid == study_uid)
        .where(StudyClaim.state == "accepted")
    )
    return ({owner} if owner is not None else set()) | set(accepted)
