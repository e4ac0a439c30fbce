"""Hub hardening regressions (docs/security.md): no anonymous agents by default, enrollment
from the command line, request body limits per route."""

from __future__ import annotations

import asyncio
import os
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
