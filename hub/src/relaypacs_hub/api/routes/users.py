"""Admin API: users. List, create, change role / facilities / disabled / password, delete.

A change that narrows what someone may do (role, facilities, disable, password reset, delete)
revokes their refresh tokens; their access token lapses within minutes.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from relaypacs_hub.api.deps import AdminAuth, State
from relaypacs_hub.auth.service import AuthError
from relaypacs_hub.services import users
from relaypacs_hub.services.users import Role, UserPublic, UserUpdate

router = APIRouter(prefix="/api/v1/users", tags=["admin: users"])

Username = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")


class UserCreate(BaseModel):
    username: str = Username
    password: str = Field(min_length=12, max_length=1024)
    role: Role
    facilities: list[str] = Field(default_factory=list)


@router.get("", response_model=list[UserPublic])
async def list_users(state: State, _auth: AdminAuth) -> list[UserPublic]:
    return await users.list_users(state)


@router.post("", response_model=UserPublic, status_code=201)
async def create_user(body: UserCreate, state: State, who: AdminAuth) -> UserPublic:
    try:
        user = await state.auth.create_user(
            who.name, body.username, body.password, body.role, body.facilities
        )
    except AuthError as exc:
        raise HTTPException(exc.status, {"code": exc.code, "detail": exc.detail}) from exc
    return UserPublic.of(user)


@router.patch("/{username}", response_model=UserPublic)
async def update_user(username: str, body: UserUpdate, state: State, who: AdminAuth) -> UserPublic:
    return await users.update_user(state, who.name, username, body)


@router.delete("/{username}", status_code=204)
async def delete_user(username: str, state: State, who: AdminAuth) -> None:
    await users.delete_user(state, who.name, username)
