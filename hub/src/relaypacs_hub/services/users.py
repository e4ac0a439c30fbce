"""User accounts for admins: list, create, change, delete.

A change that narrows what someone may do (role, facilities, disable, password reset, delete)
revokes their refresh tokens; their access token lapses within minutes.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs_hub.audit import audit
from relaypacs_hub.auth.passwords import hash_password
from relaypacs_hub.auth.service import facilities_of
from relaypacs_hub.db.models import LoginSource, RefreshToken, User, utcnow
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services.errors import Refused, Unknown

Role = Literal["clinician", "radiographer", "radiologist", "admin"]


class UserUpdate(BaseModel):
    role: Role | None = None
    facilities: list[str] | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=12, max_length=1024)


class UserPublic(BaseModel):
    username: str
    role: str
    facilities: list[str]
    disabled: bool
    totp_enabled: bool
    locked_until: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, u: User) -> UserPublic:
        return cls(
            username=u.username,
            role=u.role,
            facilities=facilities_of(u),
            disabled=u.disabled,
            totp_enabled=u.totp_enabled,
            locked_until=u.locked_until,
            created_at=u.created_at,
        )


def _not_found(username: str) -> Unknown:
    return Unknown("not_found", f"no user {username}")


async def list_users(hub: HubRuntime) -> list[UserPublic]:
    async with hub.sessionmaker() as session:
        users = await session.scalars(select(User).order_by(User.username))
        return [UserPublic.of(u) for u in users]


async def _keep_an_admin(session: AsyncSession, leaving: User) -> None:
    """Refuse a change that would leave no enabled admin: nobody could manage users any more
    (the machine token aside). Locks the admin rows so two such changes cannot both pass."""
    others = await session.scalars(
        select(User.id)
        .where(User.role == "admin", User.disabled.is_(False), User.id != leaving.id)
        .with_for_update()
    )
    if others.first() is None:
        raise Refused("last_admin", "this is the last enabled admin: add another first")


async def update_user(hub: HubRuntime, actor: str, username: str, body: UserUpdate) -> UserPublic:
    async with hub.sessionmaker() as session, session.begin():
        user = await session.scalar(select(User).where(User.username == username))
        if user is None:
            raise _not_found(username)
        changed: dict[str, Any] = {}
        was_admin = user.role == "admin" and not user.disabled
        if body.role is not None and body.role != user.role:
            user.role = changed["role"] = body.role
        if body.facilities is not None:
            user.facilities_json = json.dumps(sorted(set(body.facilities)))
            changed["facilities"] = sorted(set(body.facilities))
        if body.disabled is not None and body.disabled != user.disabled:
            user.disabled = changed["disabled"] = body.disabled
        if body.password is not None:
            user.password_hash = hash_password(body.password)
            # A new password starts the failed-login counts afresh (they are keyed by it).
            user.locked_until = None
            changed["password_reset"] = True  # never the password itself
        if was_admin and (user.role != "admin" or user.disabled):
            await _keep_an_admin(session, user)
        if changed:
            user.updated_at = utcnow()
            await hub.auth.revoke_all(session, user.id)
            await audit(session, actor, "user_update", username, **changed)
        return UserPublic.of(user)


async def delete_user(hub: HubRuntime, actor: str, username: str) -> None:
    async with hub.sessionmaker() as session, session.begin():
        user = await session.scalar(select(User).where(User.username == username))
        if user is None:
            raise _not_found(username)
        if user.role == "admin" and not user.disabled:
            await _keep_an_admin(session, user)
        await session.execute(delete(RefreshToken).where(RefreshToken.user_id == user.id))
        await session.execute(delete(LoginSource).where(LoginSource.user_id == user.id))
        await session.delete(user)
        await audit(session, actor, "user_delete", username)
