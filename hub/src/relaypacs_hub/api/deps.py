"""FastAPI dependencies: everything a route needs comes from ``app.state`` built in create_app."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request, status
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.config import HubSettings
from relaypacs_hub.storage.base import ObjectStore


@dataclass
class HubState:
    settings: HubSettings
    sessionmaker: async_sessionmaker[AsyncSession]
    store: ObjectStore
    destination_names: list[str]
    wake_worker: object  # callable, or None when no worker runs in this process
    tus: Any = None  # relaypacs_hub.ingest.tus.TusService


def get_state(request: Request) -> HubState:
    state: HubState = request.app.state.hub
    return state


State = Annotated[HubState, Depends(get_state)]


def require_agent(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    token = state.settings.agent_token
    if token is None:
        return
    expected = f"Bearer {token.get_secret_value()}"
    if not authorization or not hmac.compare_digest(authorization.encode(), expected.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail={"code": "unauthorized", "detail": "a valid agent token is required"},
            headers={"WWW-Authenticate": "Bearer"},
        )


AgentAuth = Annotated[None, Depends(require_agent)]
