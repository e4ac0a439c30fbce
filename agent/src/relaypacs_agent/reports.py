"""Reports at the agent: the follower takes the facility's report feed from the hub (long poll
with a cursor) and keeps each report in the store, a PDF as a file, so clinicians read them on
the LAN even when the WAN is down later.

A report is written before the cursor moves past it, in one transaction (a PDF file first, with
fsync): a crash between the two takes the same event again, and taking it again changes nothing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import structlog

from relaypacs_agent.store.db import Store
from relaypacs_agent.uplink.client import HubClient, HubRefused, HubUnavailable
from relaypacs_shared.reports import later_status

log = structlog.get_logger("relaypacs.agent.reports")

CURSOR_KEY = "report_cursor"


class ReportInbox:
    """The reports this agent holds, and a change counter the LAN app's live stream watches."""

    def __init__(self, store: Store, folder: Path) -> None:
        self.store = store
        self.folder = folder
        self._lock = threading.Lock()
        self.version = 0

    def cursor(self) -> int:
        return int(self.store.meta(CURSOR_KEY) or 0)

    def document_path(self, name: str) -> Path:
        return self.folder / name

    def write_document(self, report_id: int, data: bytes) -> str:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{report_id}.pdf"
        tmp = self.folder / f".{name}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.folder / name)
        return name

    def take(self, seq: int, report: dict[str, Any], document: str | None) -> bool:
        """Keep one report and move the cursor past its event; False if already held."""
        new = self.store.keep_report(seq, report, document, CURSOR_KEY)
        if new:
            self.bump()
        return new

    def bump(self) -> None:
        with self._lock:
            self.version += 1

    # -- reading ----------------------------------------------------------------------------

    def for_study(self, study_uid: str) -> list[dict[str, Any]]:
        return [report_row(r) for r in self.store.study_reports(study_uid)]

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """Each study's latest report, newest first, with the study's status."""
        out = []
        for r in self.store.latest_reports(limit):
            item = report_row(r)
            item["study_status"] = self.study_status(r["study_instance_uid"])
            out.append(item)
        return out

    def study_status(self, study_uid: str) -> str:
        status = "none"
        for r in reversed(self.store.study_reports(study_uid)):  # oldest first
            status = later_status(status, r["status"])
        return status

    def get(self, report_id: int) -> dict[str, Any] | None:
        row = self.store.report(report_id)
        return report_row(row) if row is not None else None


def report_row(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "study_instance_uid": row["study_instance_uid"],
        "status": row["status"],
        "kind": row["kind"],
        "title": row["title"],
        "text": row["text"],
        "document": f"/api/v1/reports/{row['id']}/document" if row["document"] else None,
        "hub_received_at": row["hub_received_at"],
        "received_at": row["received_at"],
    }


class ReportFollower:
    """Follows the hub's report feed for this agent's facility (a thread of the agent)."""

    def __init__(
        self,
        inbox: ReportInbox,
        client: HubClient,
        *,
        wait: float = 25.0,
        retry_max: float = 60.0,
    ) -> None:
        self.inbox = inbox
        self.client = client
        self.wait = wait
        self.retry_max = retry_max
        self.last_error: str | None = None

    def poll_once(self, wait: float | None = None) -> int:
        """One feed request; returns how many new reports were kept."""
        after = self.inbox.cursor()
        page = self.client.report_feed(after, self.wait if wait is None else wait)
        kept = 0
        for event in page.get("events", []):
            report = event["report"]
            document = None
            if report.get("has_content"):
                data = self.client.report_document(int(report["id"]))
                document = self.inbox.write_document(int(report["id"]), data)
            if self.inbox.take(int(event["seq"]), report, document):
                kept += 1
                log.info(
                    "report_received",
                    report_id=report["id"],
                    status=report["status"],
                    kind=report["kind"],
                )
        return kept

    def run(self, stop: threading.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            try:
                self.poll_once()
                backoff = 1.0
                self.last_error = None
            except (HubUnavailable, HubRefused) as exc:
                self.last_error = str(exc)
                log.warning("report_feed_unavailable", error=str(exc)[:200])
                stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_max)
            except Exception as exc:  # a bad event must not stop the follower
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("report_feed_failed")
                stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_max)
