"""The agent's heartbeat to the hub. Agents sit behind NAT, so Prometheus cannot scrape them: now
and then the agent posts its health (backlog, oldest waiting study, disk free against its
reserve, open quarantine by reason, last hub contact, version) and the hub exports it per agent.
Counts and times only: no UID, no file name, nothing from a header leaves in a heartbeat."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import structlog

from relaypacs_agent.store.reader import CatalogueReader
from relaypacs_agent.uplink.client import HubClient
from relaypacs_shared.errors import RelayError
from relaypacs_shared.wire import LABEL_CODE, Heartbeat

log = structlog.get_logger("relaypacs.agent.heartbeat")


def agent_version() -> str:
    try:
        return version("relaypacs-agent")[:32]
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without install
        return "unknown"


def collect(
    db_path: Path,
    spool_dir: Path,
    min_free_bytes: int,
    *,
    name: str,
    last_hub_contact: float | None,
    now: float | None = None,
) -> Heartbeat:
    """Read the agent's health from its catalogue (its own read-only connection)."""
    now = time.time() if now is None else now
    with CatalogueReader(db_path) as reader:
        backlog = reader.backlog()
        reasons = reader.open_quarantine_reasons()
    quarantine: dict[str, int] = {}
    for reason, n in reasons.items():
        code = str(reason) if re.match(LABEL_CODE, str(reason)) else "other"
        quarantine[code] = quarantine.get(code, 0) + int(n)
    spool_dir.mkdir(parents=True, exist_ok=True)
    return Heartbeat(
        name=name[:128] or "agent",
        version=agent_version(),
        backlog_studies=backlog.studies,
        backlog_bytes=backlog.bytes,
        oldest_waiting_seconds=(
            max(now - backlog.oldest_received_at, 0.0)
            if backlog.oldest_received_at is not None
            else None
        ),
        disk_free_bytes=shutil.disk_usage(spool_dir).free,
        disk_reserve_bytes=min_free_bytes,
        quarantine=quarantine,
        last_hub_contact_at=(
            datetime.fromtimestamp(last_hub_contact, UTC) if last_hub_contact else None
        ),
    )


class HeartbeatSender:
    """Posts a heartbeat every ``every`` seconds (and once at start); a failure is logged and
    tried again at the next beat: nothing queues up while the WAN is down."""

    def __init__(
        self,
        client: HubClient,
        db_path: Path,
        spool_dir: Path,
        min_free_bytes: int,
        *,
        every: float,
        name: str | None = None,
    ) -> None:
        self.client = client
        self.db_path = db_path
        self.spool_dir = spool_dir
        self.min_free_bytes = min_free_bytes
        self.every = every
        self.name = name or socket.gethostname()
        self.sent = 0

    def beat(self) -> dict[str, Any] | None:
        body = collect(
            self.db_path,
            self.spool_dir,
            self.min_free_bytes,
            name=self.name,
            last_hub_contact=self.client.last_contact,
        )
        try:
            answer = self.client.heartbeat(body.model_dump(mode="json"))
        except RelayError as exc:
            log.info("heartbeat_not_sent", error=str(exc)[:200])
            return None
        self.sent += 1
        return answer

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat_failed")
            stop.wait(self.every)
