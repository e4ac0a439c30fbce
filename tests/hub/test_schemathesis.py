"""Property-based fuzzing of the hub's OpenAPI schema, in process (ASGI), authenticated: no 5xx.

Every operation gets a bounded number of generated requests, each sent with an admin user's
access token, the admin machine token and the agent token, so the handlers behind the
authorization checks are reached too. Any 5xx is a bug in the hub.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from relaypacs_hub.main import create_app
from tests.hub.authfix import (
    ADMIN_TOKEN,
    AGENT_TOKEN,
    PASSWORD,
    add_user,
    auth_settings,
    hub_client,
)

pytestmark = pytest.mark.integration

TOKENS: dict[str, str] = {"admin-token": ADMIN_TOKEN, "agent": AGENT_TOKEN}


async def _admin_user_token(hub_settings: Any) -> str:
    """An admin user in the database (before the fuzzed app starts), and an access token."""
    async with hub_client(hub_settings) as (app, client):
        await add_user(app, "fuzz-admin", "admin")
        r = await client.post(
            "/api/v1/auth/login", json={"username": "fuzz-admin", "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        token: str = r.json()["access_token"]
        return token


# The app is built at import (that starts nothing); its lifespan starts at the first request,
# in schemathesis' ASGI client, after the fixture below has put an admin user in its database.
_DATA_DIR = Path(tempfile.mkdtemp(prefix="relaypacs-fuzz-"))
HUB_SETTINGS = auth_settings(
    _DATA_DIR,
    access_token_minutes=120,
    login_max_failures=1000,
    login_rate_per_user=0,
    login_rate_per_ip=0,
)
APP = create_app(HUB_SETTINGS, migrate=False)  # the fixture's hub migrates the database
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP


@pytest.fixture(scope="module", autouse=True)
def admin_user() -> Iterator[None]:
    TOKENS["admin-user"] = asyncio.run(_admin_user_token(HUB_SETTINGS))
    yield
    shutil.rmtree(_DATA_DIR, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors(case: Any) -> None:
    # The report feed is a long poll (up to a minute): a valid wait is cut to a second so a
    # generated request is answered within the client's timeout; invalid ones are sent as made.
    if case.query and "wait" in case.query:
        try:
            wait = float(case.query["wait"])
        except (TypeError, ValueError):
            wait = None
        if wait is not None and wait > 1:
            case.query["wait"] = 1
    for token in TOKENS.values():
        case.call_and_validate(
            headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error]
        )
