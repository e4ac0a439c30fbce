"""Every hub route declares who may call it: this table is the truth, and a route missing from it
fails. Each route is called with no credentials, with each role's access token, with the admin
machine token, with the agent token and with an enrolled device's credential; 401/403 must come
exactly where the table says."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relaypacs_hub.api.deps import route_policy
from relaypacs_hub.auth import devices
from relaypacs_hub.main import create_app
from tests.hub.authfix import ADMIN_TOKEN, AGENT_TOKEN, ROLES, add_user, auth_settings, hub_client

PUBLIC = frozenset({"anonymous", *ROLES, "admin-token", "agent", "device"})
USERS = frozenset(ROLES)
AGENT = frozenset({"agent", "device"})
DEVICE = frozenset({"device"})
ADMIN = frozenset({"admin", "admin-token"})
STUDY_READERS = frozenset({"agent", "device", "radiologist", "admin", "admin-token"})
STUDY_BROWSERS = frozenset({"radiologist", "admin", "admin-token"})
# Sending a study: agents, and people uploading straight to the hub (every role by default:
# RELAYPACS_HUB_UPLOAD_ROLES; the TOTP requirement is turned off here, test_direct_upload checks
# it), who also read the status of what they sent.
UPLOADERS = AGENT | USERS
STUDY_STATUS_READERS = STUDY_READERS | USERS

TABLE: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    # Loopback or the metrics token: this client is on the loopback (test_metrics checks the
    # refusal off it).
    ("GET", "/metrics"): PUBLIC,
    # The dashboard's static files: plain FastAPI routes with the public policy (no mount), so
    # they are enumerated and checked like every other route.
    ("GET", "/"): PUBLIC,
    ("GET", "/dashboard"): PUBLIC,
    ("GET", "/dashboard/"): PUBLIC,
    ("GET", "/dashboard/{path:path}"): PUBLIC,
    # The upload app (the PWA's index.html) for people with no agent nearby.
    ("GET", "/upload"): PUBLIC,
    ("GET", "/upload/"): PUBLIC,
    ("GET", "/upload/config.json"): PUBLIC,
    ("GET", "/upload/{path:path}"): PUBLIC,
    ("POST", "/api/v1/auth/login"): PUBLIC,
    ("POST", "/api/v1/auth/refresh"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): PUBLIC,
    ("GET", "/api/v1/auth/me"): USERS,
    ("POST", "/api/v1/auth/totp/enroll"): USERS,
    ("POST", "/api/v1/auth/totp/confirm"): USERS,
    ("GET", "/api/v1/users"): ADMIN,
    ("GET", "/api/v1/study-claims"): ADMIN,
    ("POST", "/api/v1/study-claims/{study_uid}/{facility}"): ADMIN,
    ("POST", "/api/v1/users"): ADMIN,
    ("PATCH", "/api/v1/users/{username}"): ADMIN,
    ("DELETE", "/api/v1/users/{username}"): ADMIN,
    ("PUT", "/api/v1/studies/{study_uid}/instances/{sop_uid}"): AGENT,
    ("POST", "/api/v1/studies/{study_uid}/commit"): UPLOADERS,
    ("POST", "/api/v1/studies/{study_uid}/manifest"): UPLOADERS,
    ("GET", "/api/v1/studies/{study_uid}"): STUDY_STATUS_READERS,
    ("GET", "/api/v1/studies"): STUDY_BROWSERS,
    ("GET", "/api/v1/stats"): STUDY_BROWSERS,
    # The archive webhook token is checked in tests/hub/test_reports_webhook.py.
    ("POST", "/api/v1/reports/archive-changes"): frozenset({"admin-token"}),
    ("GET", "/api/v1/analytics"): STUDY_BROWSERS,
    ("GET", "/api/v1/analytics/studies.csv"): STUDY_BROWSERS,
    ("OPTIONS", "/api/v1/uploads"): PUBLIC,
    ("OPTIONS", "/api/v1/uploads/{upload_id}"): PUBLIC,
    ("POST", "/api/v1/uploads"): UPLOADERS,
    ("HEAD", "/api/v1/uploads/{upload_id}"): UPLOADERS,
    ("PATCH", "/api/v1/uploads/{upload_id}"): UPLOADERS,
    ("DELETE", "/api/v1/uploads/{upload_id}"): UPLOADERS,
    ("GET", "/api/v1/jobs"): ADMIN,
    ("GET", "/api/v1/jobs/{job_id}"): ADMIN,
    ("POST", "/api/v1/jobs/{job_id}/retry"): ADMIN,
    ("POST", "/api/v1/jobs/{job_id}/release"): ADMIN,
    ("POST", "/api/v1/jobs/retry-dead"): ADMIN,
    ("GET", "/api/v1/rules"): ADMIN,
    ("PUT", "/api/v1/rules"): ADMIN,
    ("POST", "/api/v1/rules/reload"): ADMIN,
    ("GET", "/api/v1/rules/history"): ADMIN,
    ("POST", "/api/v1/rules/dry-run"): ADMIN,
    ("GET", "/api/v1/rules/unrouted"): ADMIN,
    ("GET", "/api/v1/destinations"): ADMIN,
    ("GET", "/api/v1/destinations/{name}"): ADMIN,
    ("POST", "/api/v1/devices/enrollment-codes"): ADMIN,
    ("POST", "/api/v1/devices/enroll"): PUBLIC,
    ("POST", "/api/v1/devices/renew"): DEVICE,
    ("GET", "/api/v1/devices/verifiers"): AGENT,
    ("POST", "/api/v1/devices/totp-steps"): AGENT,
    ("GET", "/api/v1/devices"): ADMIN,
    ("POST", "/api/v1/devices/heartbeat"): AGENT,
    ("POST", "/api/v1/devices/{device_id}/revoke"): ADMIN,
    ("POST", "/api/v1/studies/{study_uid}/reports"): STUDY_BROWSERS,
    ("GET", "/api/v1/studies/{study_uid}/reports"): STUDY_READERS,
    ("GET", "/api/v1/reports/{report_id}/content"): STUDY_READERS,
    ("GET", "/api/v1/reports/feed"): AGENT,
    ("GET", "/api/v1/push/key"): AGENT,
    ("POST", "/api/v1/push/subscriptions"): DEVICE,
    ("DELETE", "/api/v1/push/subscriptions"): DEVICE,
}

# Framework pages (OpenAPI schema, docs) carry no policy dependency; every API route does.
_FRAMEWORK = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}

_PARAMS = {
    "study_uid": "1.2.826.0.1.3680043.9",
    "sop_uid": "1.2.826.0.1.3680043.9.1",
    "upload_id": "0123456789abcdef",
    "job_id": "999",
    "name": "nowhere",
    "username": "nobody",
    "device_id": "0123456789abcdef0123456789abcdef",
    "path": "assets/app.js",
    "report_id": "999",
    "facility": "nowhere",
}


def _routes(app: Any) -> Iterator[tuple[str, str, Any]]:
    """(method, path, dependant) of every route, including those of included routers."""
    for route in app.routes:
        contexts = (
            route.effective_route_contexts()
            if hasattr(route, "effective_route_contexts")
            else [route]
        )
        for r in contexts:
            for method in sorted(r.methods or ()):
                if method == "HEAD" and "GET" in r.methods:
                    continue  # Starlette's implicit HEAD for GET
                yield method, r.path, getattr(r, "dependant", None)


def test_every_route_is_in_the_table_and_declares_a_policy(tmp_path: Path) -> None:
    app = create_app(auth_settings(tmp_path))
    seen = set()
    for method, path, dependant in _routes(app):
        seen.add((method, path))
        assert (method, path) in TABLE, f"{method} {path} is missing from the route table"
        if path not in _FRAMEWORK:
            policies = route_policy(dependant)
            assert len(policies) == 1, f"{method} {path} must declare exactly one policy"
    assert seen == set(TABLE), f"table lists routes that do not exist: {set(TABLE) - seen}"


async def test_each_caller_gets_in_exactly_where_the_table_says(tmp_path: Path) -> None:
    # A small dashboard build, so the dashboard routes answer 200 rather than 503 (not built).
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "dashboard.html").write_text("<!doctype html><title>t</title>")
    (dist / "index.html").write_text("<!doctype html><title>u</title>")
    (dist / "assets" / "app.js").write_text("console.log(1)")
    settings = auth_settings(tmp_path, pwa_dir=dist, direct_upload_require_totp=False)
    async with hub_client(settings) as (app, client):
        issuer = app.state.hub.auth.issuer
        callers: dict[str, dict[str, str]] = {
            "anonymous": {},
            "admin-token": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
            "agent": {"Authorization": f"Bearer {AGENT_TOKEN}"},
        }
        sm = app.state.hub.sessionmaker
        code, _ = await devices.issue_code(sm, "test", "fac-a", 10)
        device, secret = await devices.enroll(sm, code, "route-table")
        callers["device"] = {"Authorization": f"Bearer {devices.credential(device.id, secret)}"}
        for role in ROLES:
            await add_user(app, f"u-{role}", role)
            token = issuer.issue(f"u-{role}", role, ["fac-a"])
            callers[role] = {"Authorization": f"Bearer {token}"}
        wrong: list[str] = []
        for method, path, _ in _routes(app):
            url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: _PARAMS[m.group(1)], path)
            for caller, headers in callers.items():
                r = await client.request(method, url, headers={**headers, "Tus-Resumable": "1.0.0"})
                refused = r.status_code in (401, 403)
                if refused == (caller in TABLE[(method, path)]):
                    wrong.append(f"{method} {path} as {caller}: {r.status_code} {r.text[:80]}")
                assert r.status_code < 500, f"{method} {path} as {caller}: {r.status_code}"
                if caller == "device" and path.endswith("/renew") and r.status_code == 200:
                    # Renewal replaces the secret: later routes are called with the new one.
                    renewed = devices.credential(device.id, r.json()["secret"])
                    callers["device"] = {"Authorization": f"Bearer {renewed}"}
        assert wrong == []
