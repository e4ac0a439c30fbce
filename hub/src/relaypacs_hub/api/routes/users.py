"""Admin API: users. List, create, change role / facilities / disabled / password, delete.

A change that narrows what someone may do (role, facilities, disable, password reset, delete)
revokes their refresh tokens; their access token lapses within minutes.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs_hub.api.deps import AdminAuth, State
from relaypacs_hub.audit import audit
from relaypacs_hub.auth.passwords import hash_password
from relaypacs_hub.auth.service import AuthError, facilities_of
from relaypacs_hub.db.models import LoginSource, RefreshToken, User, utcnow

router = APIRouter(prefix="/api/v1/users", tags=["admin: users"])

Role = Literal["clinician", "radiographer", "radiologist", "admin"]
Username = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")


class UserCreate(BaseModel):
    username: str = Username
    password: str = Field(min_length=12, max_length=1024)
    role: Role
    facilities: list[str] = Field(default_factory=list)


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


def _not_found(username: str) -> HTTPException:
    return HTTPException(404, {"code": "not_found", "detail": f"no user {username}"})


@router.get("", response_model=list[UserPublic])
async def list_users(state: State, _auth: AdminAuth) -> list[UserPublic]:
    async with state.sessionmaker() as session:
        users = await session.scalars(select(User).order_by(User.username))
        return [UserPublic.of(u) for u in users]


@router.post("", response_model=UserPublic, status_code=201)
async def create_user(body: UserCreate, state: State, who: AdminAuth) -> UserPublic:
    try:
        user = await state.auth.create_user(
            who.name, body.username, body.password, body.role, body.facilities
        )
    except AuthError as exc:
        raise HTTPException(exc.status, {"code": exc.code, "detail": exc.detail}) from exc
    return UserPublic.of(user)


async def _keep_an_admin(session: AsyncSession, leaving: User) -> None:
    """Refuse a change that would leave no enabled admin: nobody could manage users any more
    (the machine token aside). Locks the admin rows so two such changes cannot both pass."""
    others = await session.scalars(
        select(User.id)
        .where(User.role == "admin", User.disabled.is_(False), User.id != leaving.id)
        .with_for_update()
    )
    if others.first() is None:
        raise HTTPException(
            409,
            {"code": "last_admin", "detail": "this is the last enabled admin: add another first"},
        )


@router.patch("/{username}", response_model=UserPublic)
async def update_user(username: str, body: UserUpdate, state: State, who: AdminAuth) -> UserPublic:
    async with state.sessionmaker() as session, session.begin():
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
            await state.auth.revoke_all(session, user.id)
            await audit(session, who.name, "user_update", username, **changed)
        return UserPublic.of(user)


@router.delete("/{username}", status_code=204)
async def delete_user(username: str, state: State, who: AdminAuth) -> None:
    async with state.sessionmaker() as session, session.begin():
        user = await session.scalar(select(User).where(User.username == username))
        if user is None:
            raise _not_found(username)
        if user.role == "admin" and not user.disabled:
            await _keep_an_admin(session, user)
        await session.execute(delete(RefreshToken).where(RefreshToken.user_id == user.id))
        await session.execute(delete(LoginSource).where(LoginSource.user_id == user.id))
        await session.delete(user)
        await audit(session, who.name, "user_delete", username)
