"""An agent's LAN web app in one process, over a real catalogue and ingestor, with the hub's
verifier feed stood in by a function (the end-to-end tests use the real hub)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from argon2 import PasswordHasher

from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.reports import ReportInbox
from relaypacs_agent.status import read_status
from relaypacs_agent.store.db import Store
from relaypacs_agent.uplink.client import HubUnavailable
from relaypacs_agent.web.app import WebContext, create_web_app
from relaypacs_agent.web.auth import LanAuth
from relaypacs_agent.web.batches import BatchService

PASSWORD = "correct horse battery staple"
ROLES = ("clinician", "radiographer", "radiologist", "admin")
_HASH = PasswordHasher().hash(PASSWORD)


def user(name: str, role: str, facilities: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "username": name,
        "role": role,
        "facilities": facilities if facilities is not None else ["north"],
        "password_hash": _HASH,
        "totp_secret": None,
        "totp_required": False,
        "totp_last_step": None,
        **extra,
    }


@dataclass
class FakeHub:
    """The verifier feed as the hub answers it; ``down`` makes it unreachable."""

    users: list[dict[str, Any]] = field(default_factory=lambda: [user(f"{r}1", r) for r in ROLES])
    down: bool = False
    calls: int = 0
    claims: list[tuple[str, int, bool]] = field(default_factory=list)

    def verifiers(self) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise HubUnavailable("hub unreachable: ConnectError")
        return {"generated_at": "2026-01-01T00:00:00", "users": list(self.users)}

    def claim_totp_step(self, username: str, step: int) -> bool:
        """As ``POST /api/v1/devices/totp-steps``: a later step than any used wins."""
        if self.down:
            raise HubUnavailable("hub unreachable: ConnectError")
        u = next(u for u in self.users if u["username"] == username)
        accepted = u["totp_last_step"] is None or u["totp_last_step"] < step
        if accepted:
            u["totp_last_step"] = step
        self.claims.append((username, step, accepted))
        return accepted


@dataclass
class Web:
    client: httpx.AsyncClient
    store: Store
    hub: FakeHub
    auth: LanAuth
    batches: BatchService
    upload_dir: Path
    woken: list[int]

    async def login(self, username: str, **extra: Any) -> dict[str, str]:
        r = await self.client.post(
            "/api/v1/auth/login", json={"username": username, "password": PASSWORD, **extra}
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}


@asynccontextmanager
async def web_app(
    tmp_path: Path,
    *,
    hub: FakeHub | None = None,
    facility: str | None = "north",
    max_upload_bytes: int = 1 << 30,
    sync_first: bool = True,
    pwa_dir: Path | None = None,
    min_free_bytes: int = 0,
) -> AsyncIterator[Web]:
    hub = hub or FakeHub()
    store = Store(tmp_path / "agent.db")
    ingestor = Ingestor(
        store,
        spool_dir=tmp_path / "spool",
        quarantine_dir=tmp_path / "quarantine",
        max_instance_bytes=max_upload_bytes,
        min_free_bytes=min_free_bytes,
    )
    auth = LanAuth(
        store,
        fetch_verifiers=hub.verifiers,
        facility=lambda: facility,
        claim_totp_step=hub.claim_totp_step,
    )
    if sync_first:
        auth.sync()
    upload_dir = tmp_path / "incoming" / "pwa"
    batches = BatchService(store, ingestor, upload_dir, facility=lambda: facility)
    woken: list[int] = []
    ctx = WebContext(
        auth=auth,
        batches=batches,
        max_upload_bytes=max_upload_bytes,
        version="test",
        facility=lambda: facility,
        status=lambda: read_status(tmp_path / "agent.db", 0),
        wake_sender=lambda: woken.append(1),
        pwa_dir=pwa_dir,
        last_contact_at=lambda: None,
        reports=ReportInbox(store, tmp_path / "reports"),
    )
    app = create_web_app(ctx)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://agent.test") as client:
        try:
            yield Web(client, store, hub, auth, batches, upload_dir, woken)
        finally:
            store.close()


def tus_metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


TUS = {"Tus-Resumable": "1.0.0"}


def patch_headers(headers: dict[str, str], offset: int) -> dict[str, str]:
    return {
        **headers,
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }


async def create_upload(
    web: Web, headers: dict[str, str], batch_id: str, size: int, filename: str = "image.dcm"
) -> str:
    """tus creation of one file of ``batch_id``; answers the upload's URL."""
    r = await web.client.post(
        "/api/v1/uploads",
        headers={
            **headers,
            **TUS,
            "Upload-Length": str(size),
            "Upload-Metadata": tus_metadata(filename=filename, batch=batch_id),
        },
    )
    assert r.status_code == 201, r.text
    return str(r.headers["location"])


async def tus_upload(
    web: Web,
    headers: dict[str, str],
    batch_id: str,
    data: bytes,
    filename: str = "image.dcm",
    chunk: int | None = None,
    after_chunk: Callable[[int], None] | None = None,
) -> str:
    url = await create_upload(web, headers, batch_id, len(data), filename)
    offset = 0
    step = chunk or max(len(data), 1)
    while offset < len(data):
        part = data[offset : offset + step]
        r = await web.client.patch(url, content=part, headers=patch_headers(headers, offset))
        assert r.status_code == 204, r.text
        offset = int(r.headers["upload-offset"])
        if after_chunk:
            after_chunk(offset)
    return url
