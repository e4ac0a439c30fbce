"""The catalogue read over a read-only connection of its own: ``relaypacs-agent status`` (another
process than the agent's) and the heartbeat (the agent's, off the writer's lock, so a long write
never holds a beat back). WAL lets it read while the agent writes; each read is a statement of
its own. Opening it on a database not yet migrated to ``002_ingest`` works: what that migration
brought reads as absent.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from relaypacs_agent.store.uplink import TransferProgress, transfer_progress


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    state: str  # receiving | committed | delivered
    service_level: str
    attempts: int
    commits: int
    ready_at: float | None  # None also before 002_ingest
    metadata: str  # JSON object; '{}' also before 002_ingest
    last_error: str | None
    committed_at: float | None
    delivered_at: float | None
    hub_status: str | None  # the hub's last study status, JSON


@dataclass(frozen=True)
class Backlog:
    """Studies not yet delivered: how many, the oldest one's first instance, their bytes."""

    studies: int
    oldest_received_at: float | None
    bytes: int


@dataclass(frozen=True)
class PacsReports:
    """Reports stored into the facility's PACS: rows by state and the latest problem."""

    by_state: dict[str, int]
    last_error: str | None


class CatalogueReader:
    def __init__(self, db_path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
        self.conn.row_factory = sqlite3.Row
        self._migrated: bool | None = None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> CatalogueReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def migrated(self) -> bool:
        """The database has 002_ingest's columns (status may run before the agent's first
        start)."""
        if self._migrated is None:
            columns = {r[1] for r in self.conn.execute("PRAGMA table_info(quarantine)")}
            self._migrated = "resolution" in columns
        return self._migrated

    def _open_q(self) -> str:
        return " WHERE resolution IS NULL" if self.migrated else ""

    # -- instances, quarantine, duplicates ---------------------------------------------------

    def instances_by_state(self) -> dict[str, int]:
        return {
            r["state"]: r["n"]
            for r in self.conn.execute("SELECT state, COUNT(*) AS n FROM instances GROUP BY state")
        }

    def open_quarantine(self) -> int:
        # _open_q() is one of two constants, never input.
        sql = f"SELECT COUNT(*) FROM quarantine{self._open_q()}"  # noqa: S608
        return int(self.conn.execute(sql).fetchone()[0])

    def open_quarantine_reasons(self) -> dict[str, int]:
        """Open quarantine entries by reason."""
        return {
            r["reason"]: r["n"]
            for r in self.conn.execute(
                f"SELECT reason, COUNT(*) AS n FROM quarantine{self._open_q()} GROUP BY reason"  # noqa: S608
            )
        }

    def conformance_findings(self) -> int:
        """Instances with dciodvfy findings."""
        if not self.migrated:
            return 0
        return int(
            self.conn.execute(
                "SELECT COUNT(*) FROM instances WHERE conformance IS NOT NULL "
                "AND conformance != '[]'"
            ).fetchone()[0]
        )

    def duplicates(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0])

    # -- studies ----------------------------------------------------------------------------

    def studies(self) -> list[StudySummary]:
        """Every study, oldest first."""
        out = []
        for s in self.conn.execute("SELECT * FROM studies ORDER BY first_received_at"):
            out.append(
                StudySummary(
                    study_instance_uid=s["study_instance_uid"],
                    state=s["state"],
                    service_level=s["service_level"],
                    attempts=s["attempts"],
                    commits=s["commits"],
                    ready_at=s["ready_at"] if self.migrated else None,
                    metadata=s["metadata"] if self.migrated else "{}",
                    last_error=s["last_error"],
                    committed_at=s["committed_at"],
                    delivered_at=s["delivered_at"],
                    hub_status=s["hub_status"],
                )
            )
        return out

    def study_instances_by_state(self, study_uid: str) -> dict[str, int]:
        return {
            r["state"]: r["n"]
            for r in self.conn.execute(
                "SELECT state, COUNT(*) AS n FROM instances "
                "WHERE study_instance_uid = ? GROUP BY state",
                (study_uid,),
            )
        }

    def study_bytes(self, study_uid: str) -> int:
        return int(
            self.conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM instances WHERE study_instance_uid = ?",
                (study_uid,),
            ).fetchone()[0]
        )

    def progress(self, study_uid: str) -> TransferProgress | None:
        return transfer_progress(self.conn, study_uid)

    def backlog(self) -> Backlog:
        studies, oldest = self.conn.execute(
            "SELECT COUNT(*), MIN(first_received_at) FROM studies WHERE state != 'delivered'"
        ).fetchone()
        backlog_bytes = self.conn.execute(
            "SELECT COALESCE(SUM(i.size), 0) FROM instances i JOIN studies s "
            "ON s.study_instance_uid = i.study_instance_uid WHERE s.state != 'delivered'"
        ).fetchone()[0]
        return Backlog(
            int(studies), float(oldest) if oldest is not None else None, int(backlog_bytes)
        )

    # -- reports into the facility's PACS -----------------------------------------------------

    def pacs_reports(self) -> PacsReports | None:
        """None before the table exists (007_report_stores)."""
        if not self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'report_stores'"
        ).fetchone():
            return None
        problem = self.conn.execute(
            "SELECT last_error FROM report_stores WHERE state IN ('retry', 'refused') "
            "ORDER BY report_id DESC LIMIT 1"
        ).fetchone()
        by_state = {
            r["state"]: r["n"]
            for r in self.conn.execute(
                "SELECT state, COUNT(*) AS n FROM report_stores GROUP BY state"
            )
        }
        return PacsReports(by_state, problem["last_error"] if problem else None)
