"""Hub hardening regressions (docs/security.md): no anonymous agents by default, enrollment
from the command line, request body limits per route."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relaypacs_hub.config import HubSettings
from tests.hub.authfix import ADMIN_TOKEN, hub_client

TUS = {"Tus-Resumable": "1.0.0"}


async def test_default_hub_gives_nothing_to_anonymous_agents(tmp_path: Path) -> None:
    """The development defaults once handed every user's argon2 hash and TOTP secret to anyone
    (GET /devices/verifiers) and took anonymous uploads."""
    settings = HubSettings(data_dir=tmp_path / "hub", worker_enabled=False)
    async with hub_client(settings) as (_app, client):
        r = await client.get("/api/v1/devices/verifiers")
        assert r.status_code == 401, r.text
        assert "password_hash" not in r.text
        r = await client.post("/api/v1/uploads", headers={**TUS, "Upload-Length": "10"})
        assert r.status_code == 401
        r = await client.post("/api/v1/studies/1.2.3/manifest", json={"instances": []})
        assert r.status_code == 401
        r = await client.put("/api/v1/studies/1.2.3/instances/1.2.3.4", content=b"x")
        assert r.status_code == 401
        r = await client.get("/api/v1/studies/1.2.3")
        assert r.status_code == 401


async def test_anonymous_agents_only_when_opted_in(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path / "hub", worker_enabled=False, anonymous_agents=True)
    async with hub_client(settings) as (_app, client):
        r = await client.post("/api/v1/uploads", headers={**TUS, "Upload-Length": "10"})
        assert r.status_code == 201, r.text


def test_production_refuses_anonymous_agents(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ANONYMOUS_AGENTS is for development only"):
        HubSettings(
            environment="production",
            data_dir=tmp_path,
            allow_agent_token=False,
            anonymous_agents=True,
        )


async def test_enrollment_code_from_the_command_line_enrolls_an_agent(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relaypacs_hub.cli", "enrollment-code", "--facility", "clinic-a"],
        env={**os.environ, "RELAYPACS_HUB_DATA_DIR": str(tmp_path / "hub")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    code = result.stdout.strip()
    assert len(code) >= 32 and "\n" not in code
    settings = HubSettings(data_dir=tmp_path / "hub", worker_enabled=False)
    async with hub_client(settings) as (_app, client):
        r = await client.post("/api/v1/devices/enroll", json={"code": code, "name": "ct-room"})
        assert r.status_code == 201, r.text
        assert r.json()["facility"] == "clinic-a"
        cred = f"Bearer rpd_{r.json()['device_id']}.{r.json()['secret']}"
        r = await client.get("/api/v1/devices/verifiers", headers={"Authorization": cred})
        assert r.status_code == 200
        # The code is used up.
        r = await client.post("/api/v1/devices/enroll", json={"code": code, "name": "again"})
        assert r.status_code == 400


async def test_body_limits_per_route(tmp_path: Path) -> None:
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        worker_enabled=False,
        admin_token=ADMIN_TOKEN,
        request_max_bytes=4096,
        max_instance_bytes=100_000,
        anonymous_agents=True,
    )
    big = b"x" * 5000
    async with hub_client(settings) as (_app, client):
        r = await client.post(
            "/api/v1/auth/login", content=big, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        assert r.json()["code"] == "request_too_large"

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it is read
            for _ in range(5):
                yield b"x" * 1000

        r = await client.post(
            "/api/v1/auth/login", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        # An instance may be larger than a JSON body, up to max_instance_bytes.
        r = await client.put("/api/v1/studies/1.2.3/instances/1.2.3.4", content=big)
        assert r.status_code != 413
        r = await client.put("/api/v1/studies/1.2.3/instances/1.2.3.4", content=b"x" * 100_001)
        assert r.status_code == 413


async def test_security_headers_on_every_answer(tmp_path: Path) -> None:
    """nosniff, no-referrer and no-store on API answers (tokens, study states), errors included;
    HSTS when the hub serves TLS; the CDN-loading API pages only in development."""
    import trustme

    settings = HubSettings(data_dir=tmp_path / "hub", worker_enabled=False)
    async with hub_client(settings) as (_app, client):
        answers = [
            await client.get("/api/v1/devices/verifiers"),  # 401
            await client.post("/api/v1/auth/login", json={"username": "nobody", "password": "x"}),
            await client.post("/api/v1/auth/login", json={}),  # 422
            await client.get("/healthz"),
        ]
        assert [r.status_code for r in answers] == [401, 401, 422, 200]
        for r in answers:
            assert r.headers["x-content-type-options"] == "nosniff", r.request.url
            assert r.headers["referrer-policy"] == "no-referrer"
            assert r.headers["x-frame-options"] == "DENY"
            assert "strict-transport-security" not in r.headers  # plain HTTP
        for r in answers[:3]:
            assert r.headers["cache-control"] == "no-store"
        assert (await client.get("/docs")).status_code == 200  # development
    key_file = tmp_path / "hub" / "jwt-signing-key.pem"  # made by the development run above

    ca = trustme.CA()
    cert = ca.issue_cert("hub.example")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    production = HubSettings(
        environment="production",
        data_dir=tmp_path / "prod",
        worker_enabled=False,
        agent_token="3f9a1c7e5b2d4086a9e1f3c5b7d90e2a4c6b8d0f1e3a5c7b",  # type: ignore[arg-type]
        jwt_private_key_file=key_file,
        tls_certfile=tmp_path / "cert.pem",
        tls_keyfile=tmp_path / "key.pem",
    )
    async with hub_client(production) as (_app, client):
        r = await client.get("/healthz")
        assert r.headers["strict-transport-security"].startswith("max-age=31536000")
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/redoc")).status_code == 404
        assert (await client.get("/openapi.json")).status_code == 200


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("agent_token", "a" * 36),  # the attack run's 36 x "a"
        ("admin_token", "x"),  # and its one-character admin token
        ("admin_token", "Password1Password1Password1Password1"),
        ("metrics_token", "0123456789" * 4),
    ],
)
def test_production_refuses_guessable_tokens(tmp_path: Path, setting: str, value: str) -> None:
    strong = "3f9a1c7e5b2d4086a9e1f3c5b7d90e2a4c6b8d0f1e3a5c7b"
    values = {"agent_token": strong, setting: value}
    with pytest.raises(ValueError, match=f"RELAYPACS_HUB_{setting.upper()} is guessable"):
        HubSettings(environment="production", data_dir=tmp_path, **values)  # type: ignore[arg-type]
    # Development takes anything (the demo and the tests use short tokens).
    HubSettings(data_dir=tmp_path, **values)  # type: ignore[arg-type]
    # A random token passes.
    HubSettings(
        environment="production",
        data_dir=tmp_path,
        **{**values, setting: secrets.token_hex(16)},  # type: ignore[arg-type]
    )


async def test_enrollment_attempts_are_rate_limited_per_address(tmp_path: Path) -> None:
    """Anonymous enrollment attempts were unlimited, each one an audit row."""
    settings = HubSettings(data_dir=tmp_path / "hub", worker_enabled=False, enroll_rate_per_ip=3)
    async with hub_client(settings) as (_app, client):
        codes = []
        for i in range(3):
            r = await client.post(
                "/api/v1/devices/enroll", json={"code": f"guess-{i}", "name": "x"}
            )
            codes.append(r.status_code)
        assert codes == [400, 400, 400]
        r = await client.post("/api/v1/devices/enroll", json={"code": "guess-4", "name": "x"})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["code"] == "rate_limited"
