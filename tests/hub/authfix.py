"""Shared helpers for the auth tests: a hub with users, and tokens for each role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from relaypacs_hub.config import HubSettings
from relaypacs_hub.main import create_app

AGENT_TOKEN = "agent-" + "a" * 40
ADMIN_TOKEN = "admin-" + "b" * 40
PASSWORD = "correct horse battery staple"
ROLES = ("clinician", "radiographer", "radiologist", "admin")


def auth_settings(tmp_path: Path, **overrides: Any) -> HubSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "hub",
        "agent_token": AGENT_TOKEN,
        "admin_token": ADMIN_TOKEN,
        "worker_enabled": False,
        "login_max_failures": 3,
    }
    values.update(overrides)
    return HubSettings(**values)


@asynccontextmanager
async def hub_client(settings: HubSettings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            yield app, client


async def add_user(app: Any, username: str, role: str, facilities: list[str] | None = None) -> None:
    await app.state.hub.auth.create_user("test", username, PASSWORD, role, facilities or ["fac-a"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
