"""Web Push (RFC 8030, VAPID RFC 8292, payload encryption RFC 8291 aes128gcm) of report
notifications to the browsers of a study's facility, even when the app is closed.

Browsers subscribe on the agent's LAN app; the agent relays the subscription to the hub with its
device credential, so a subscription belongs to the device's facility. When a report is
recorded, every subscription of the study's facility gets a push whose payload holds no patient
data: ``{"kind": "report", "id": <report id>, "status": ...}``; the app fetches the rest after
sign-in. STAT studies are sent with ``Urgency: high``. A push service answering 404 or 410 has
dropped the subscription: it is deleted.

The VAPID key is ``vapid_private_key_file``, else one made at first start in ``data_dir``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any
from urllib.parse import urlsplit

import anyio
import structlog
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid
from pywebpush import WebPushException, webpush
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.config import HubSettings
from relaypacs_hub.db.models import PushSubscription, Report, StudyReport
from relaypacs_shared.netpolicy import is_loopback_host

log = structlog.get_logger("relaypacs.hub.push")

PUSH_TTL_SECONDS = 24 * 3600


def load_vapid(settings: HubSettings) -> Vapid:
    path = settings.vapid_private_key_file or settings.data_dir / "vapid-private.pem"
    if not path.exists():
        if settings.vapid_private_key_file is not None:
            raise FileNotFoundError(f"vapid_private_key_file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Vapid()
        key.generate_keys()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_pem())
    return Vapid.from_file(str(path))


def application_server_key(key: Vapid) -> str:
    """The public key as browsers take it (``applicationServerKey``): base64url, no padding."""
    raw = key.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def check_endpoint(endpoint: str) -> str | None:
    """Why a subscription endpoint is refused, or None: HTTPS only (plain HTTP on loopback)."""
    parts = urlsplit(endpoint)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return None
    return "a push endpoint must be an https:// URL"


class PushSender:
    def __init__(
        self, settings: HubSettings, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.vapid = load_vapid(settings)
        self.public_key = application_server_key(self.vapid)
        self._tasks: set[asyncio.Task[int]] = set()

    def on_report(self, report_id: int) -> None:
        """A FeedSignal listener: push in the background, never in the recorder's way."""
        task = asyncio.get_running_loop().create_task(self.push_report(report_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)

    async def push_report(self, report_id: int) -> int:
        try:
            async with self.sessionmaker() as session:
                report = await session.get(Report, report_id)
                if report is None or report.facility is None:
                    return 0
                row = await session.get(StudyReport, report.study_instance_uid)
                subs = list(
                    await session.scalars(
                        select(PushSubscription).where(PushSubscription.facility == report.facility)
                    )
                )
            payload = json.dumps({"kind": "report", "id": report.id, "status": report.status})
            urgency = "high" if row is not None and row.stat else "normal"
            sent = 0
            for sub in subs:
                if await self._send(sub, payload, urgency):
                    sent += 1
            return sent
        except Exception:
            log.exception("push_failed", report_id=report_id)
            return 0

    async def _send(self, sub: PushSubscription, payload: str, urgency: str) -> bool:
        info: dict[str, Any] = {
            "endpoint": sub.endpoint,
            "keys": {"p256dh": sub.p256dh, "auth": sub.auth},
        }
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(sub.endpoint))
        try:
            await anyio.to_thread.run_sync(
                lambda: webpush(
                    info,
                    data=payload,
                    vapid_private_key=self.vapid,
                    vapid_claims={"sub": self.settings.vapid_subject, "aud": origin},
                    ttl=PUSH_TTL_SECONDS,
                    headers={"Urgency": urgency},
                    timeout=10,
                )
            )
        except WebPushException as exc:
            status = exc.response.status_code if exc.response is not None else None
            async with self.sessionmaker() as session, session.begin():
                if status in (404, 410):
                    await session.execute(
                        delete(PushSubscription).where(PushSubscription.id == sub.id)
                    )
                    log.info("push_subscription_gone", subscription=sub.id)
                else:
                    stored = await session.get(PushSubscription, sub.id)
                    if stored is not None:
                        stored.last_error = str(exc)[:300]
                    log.warning("push_refused", subscription=sub.id, status=status)
            return False
        except Exception as exc:  # the push service is unreachable: the report is still there
            log.warning("push_unreachable", subscription=sub.id, error=type(exc).__name__)
            return False
        return True
