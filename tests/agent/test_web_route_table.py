"""Every route of the agent's LAN web app declares who may call it: this table is the truth,
and a route missing from it fails. Each route is called with no credentials and with each
role's session; 401/403 must come exactly where the table says."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import Route

from relaypacs_agent.web.app import ROUTES
from tests.agent.webfix import ROLES, web_app

PUBLIC = frozenset({"anonymous", *ROLES})
USERS = frozenset(ROLES)
UPLOADERS = frozenset({"clinician", "radiographer", "admin"})
ADMIN = frozenset({"admin"})

TABLE: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/info"): PUBLIC,
    ("POST", "/api/v1/auth/login"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): USERS,
    ("GET", "/api/v1/auth/me"): USERS,
    ("GET", "/api/v1/status"): ADMIN,
    ("GET", "/api/v1/quarantine"): ADMIN,
    ("GET", "/api/v1/batches"): UPLOADERS,
    ("POST", "/api/v1/batches"): UPLOADERS,
    ("GET", "/api/v1/batches/{batch_id}"): UPLOADERS,
    ("POST", "/api/v1/batches/{batch_id}/send"): UPLOADERS,
    ("OPTIONS", "/api/v1/uploads"): PUBLIC,
    ("POST", "/api/v1/uploads"): UPLOADERS,
    ("OPTIONS", "/api/v1/uploads/{upload_id}"): PUBLIC,
    ("HEAD", "/api/v1/uploads/{upload_id}"): UPLOADERS,
    ("PATCH", "/api/v1/uploads/{upload_id}"): UPLOADERS,
    ("DELETE", "/api/v1/uploads/{upload_id}"): UPLOADERS,
    ("GET", "/api/v1/studies/{study_uid}/report"): USERS,
    ("GET", "/api/v1/reports"): USERS,
    ("GET", "/api/v1/reports/{report_id:int}/document"): USERS,
    ("GET", "/api/v1/events"): USERS,
    ("GET", "/api/v1/push/key"): USERS,
    ("POST", "/api/v1/push/subscriptions"): USERS,
    ("GET", "/"): PUBLIC,
    ("GET", "/{path:path}"): PUBLIC,
}


def _routes() -> set[tuple[str, str]]:
    out = set()
    for path, methods, _policy, _handler in ROUTES:
        for m in methods:
            out.add((m, path))
    return out


def test_every_route_is_in_the_table() -> None:
    assert _routes() == set(TABLE)


def test_policy_matches_table() -> None:
    for path, methods, policy, _h in ROUTES:
        for m in methods:
            allowed = TABLE[(m, path)]
            if policy.public:
                assert allowed == PUBLIC, (m, path)
            else:
                assert set(policy.roles) == set(allowed), (m, path)


def _concrete(path: str) -> str:
    return (
        path.replace("{batch_id}", "0123456789abcdef01234567")
        .replace("{upload_id}", "0123456789abcdef0123456789abcdef")
        .replace("{path:path}", "some/page")
        .replace("{study_uid}", "1.2.3.4")
        .replace("{report_id:int}", "7")
        .replace("/api/v1/events", "/api/v1/events?max_seconds=0")
    )


async def test_each_caller_gets_exactly_what_the_table_says(tmp_path: Path) -> None:
    async with web_app(tmp_path) as web:
        sessions = {"anonymous": {}}
        for role in ROLES:
            sessions[role] = await web.login(f"{role}1")
        for (method, path), allowed in sorted(TABLE.items()):
            if path == "/api/v1/auth/logout":
                continue  # checked last: it ends the session
            for who, headers in sessions.items():
                r = await web.client.request(method, _concrete(path), headers=headers)
                if who in allowed:
                    assert r.status_code not in (401, 403), (method, path, who, r.status_code)
                elif who == "anonymous":
                    assert r.status_code == 401, (method, path, who, r.status_code)
                else:
                    assert r.status_code == 403, (method, path, who, r.status_code)
        for who, headers in sessions.items():
            r = await web.client.post("/api/v1/auth/logout", headers=headers)
            assert r.status_code == (401 if who == "anonymous" else 204), who


async def test_the_app_serves_exactly_the_guarded_routes(tmp_path: Path) -> None:
    """The built app's routes are the table's, each behind the guard of its declared policy."""
    async with web_app(tmp_path) as web:
        app = web.client._transport.app  # type: ignore[attr-defined]
        seen = set()
        for route in app.routes:
            assert isinstance(route, Route)
            policy = route.endpoint.policy
            for m in route.methods - {"HEAD"} if "GET" in route.methods else route.methods:
                seen.add((m, route.path))
                assert (m, route.path) in TABLE
                allowed = TABLE[(m, route.path)]
                if policy.public:
                    assert allowed == PUBLIC, (m, route.path)
                else:
                    assert set(policy.roles) == set(allowed), (m, route.path)
        assert seen == set(TABLE)
