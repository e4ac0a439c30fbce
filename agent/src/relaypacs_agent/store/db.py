"""The agent's catalogue: SQLite in WAL mode, one writer, migrations in code.

All writes go through one connection guarded by a lock (the agent's threads share it), each in
its own transaction, with ``synchronous=FULL`` so that an acknowledged write survives a power cut.
Readers in other processes (``relaypacs-agent status``) open their own read-only connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from relaypacs_agent.store.audit import append as audit_append
from relaypacs_agent.store.schema import MIGRATIONS
from relaypacs_shared.dicom import InstanceInfo

# The catalogue's row type and the errors it raises, for the agent outside the store layer, which
# imports no database driver (the import-linter contract in pyproject.toml).
Row = sqlite3.Row
IntegrityError = sqlite3.IntegrityError
OperationalError = sqlite3.OperationalError


@dataclass(frozen=True)
class SourceFile:
    """A file of a copy-mode folder, as it was when taken (so it is not taken again)."""

    folder: str
    path: str
    size: int
    mtime_ns: int


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self.migrate()

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the lock makes this connection the single writer."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self.conn.execute(sql, params))

    def migrate(self, migrations: list[tuple[str, str]] | None = None) -> list[str]:
        """Apply ``migrations`` (the catalogue's own by default; the uplink brings its tables'
        too) not yet recorded in ``_migrations``, each in one transaction with its record."""
        applied: list[str] = []
        with self._lock:
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            done = {r[0] for r in self.conn.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS if migrations is None else migrations:
                if name in done:
                    continue
                # executescript would commit an open transaction first, so the script carries
                # its own BEGIN/COMMIT: the schema change and its record land together.
                self.conn.executescript(
                    f"BEGIN IMMEDIATE;\n{sql}\nINSERT INTO _migrations (name, applied_at) "
                    f"VALUES ('{name}', {time.time()});\nCOMMIT;"
                )
                applied.append(name)
        return applied

    # -- instances ------------------------------------------------------------------------

    def get_instance(self, sop_uid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_uid,))
        return rows[0] if rows else None

    def add_instance(
        self,
        info: InstanceInfo,
        *,
        spool_path: Path,
        source: str,
        source_path: str,
        service_level: str,
        origin: str = "",
        quiet_period: float | None = None,
        metadata: dict[str, str] | None = None,
        source_file: SourceFile | None = None,
        wrapped: dict[str, str] | None = None,
    ) -> None:
        """Record an accepted instance; ``wrapped``: it came without a Part 10 header and was
        given one (transfer syntax inferred, the original's hash), audited as such."""
        now = time.time()
        with self.tx() as conn:
            conn.execute(
                """INSERT INTO instances (sop_instance_uid, study_instance_uid, series_instance_uid,
                   sop_class_uid, transfer_syntax_uid, modality, sha256, size, spool_path, source,
                   source_path, received_at, warnings, origin)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    info.sop_instance_uid,
                    info.study_instance_uid,
                    info.series_instance_uid,
                    info.sop_class_uid,
                    info.transfer_syntax_uid,
                    info.modality,
                    info.sha256,
                    info.size,
                    str(spool_path),
                    source,
                    source_path,
                    now,
                    json.dumps(list(info.warnings)) if info.warnings else "",
                    origin,
                ),
            )
            self._touch_study(
                conn, info.study_instance_uid, service_level, now, quiet_period, metadata
            )
            if source_file is not None:
                self._record_source_file(conn, source_file, "accepted", now)
            audit_append(
                conn,
                f"source:{origin or source}",
                "instance.accepted",
                info.sop_instance_uid,
                study_uid=info.study_instance_uid,
                size=info.size,
                sha256=info.sha256,
            )
            if wrapped is not None:
                audit_append(
                    conn,
                    f"source:{origin or source}",
                    "instance.wrapped",
                    info.sop_instance_uid,
                    study_uid=info.study_instance_uid,
                    came_from=source,
                    **wrapped,
                )

    @staticmethod
    def _touch_study(
        conn: sqlite3.Connection,
        study_uid: str,
        service_level: str,
        now: float,
        quiet_period: float | None,
        metadata: dict[str, str] | None,
    ) -> None:
        # A late instance of a committed study re-opens it as a follow-up delivery; any
        # readiness declared before it no longer covers it ("send now" applies to what was held).
        conn.execute(
            """INSERT INTO studies (study_instance_uid, state, service_level,
               first_received_at, last_instance_at, quiet_period, metadata)
               VALUES (?, 'receiving', ?, ?, ?, ?, ?)
               ON CONFLICT (study_instance_uid) DO UPDATE SET
                 state = 'receiving', last_instance_at = excluded.last_instance_at,
                 service_level = CASE WHEN excluded.service_level = 'stat' THEN 'stat'
                                      ELSE studies.service_level END,
                 quiet_period = COALESCE(excluded.quiet_period, studies.quiet_period),
                 metadata = CASE WHEN studies.metadata = '{}' THEN excluded.metadata
                                 ELSE studies.metadata END,
                 ready_at = NULL,
                 next_attempt_at = 0""",
            (
                study_uid,
                service_level,
                now,
                now,
                quiet_period,
                json.dumps(metadata or {}, sort_keys=True),
            ),
        )

    @staticmethod
    def _record_source_file(
        conn: sqlite3.Connection, sf: SourceFile, outcome: str, now: float
    ) -> None:
        conn.execute(
            """INSERT OR REPLACE INTO source_files (folder, path, size, mtime_ns, outcome,
               taken_at) VALUES (?,?,?,?,?,?)""",
            (sf.folder, sf.path, sf.size, sf.mtime_ns, outcome, now),
        )

    def record_source_file(self, sf: SourceFile, outcome: str) -> None:
        with self.tx() as conn:
            self._record_source_file(conn, sf, outcome, time.time())

    def source_files(self, folder: str) -> dict[str, tuple[int, int]]:
        """Copy-mode files already taken from ``folder``: path -> (size, mtime_ns)."""
        return {
            r["path"]: (r["size"], r["mtime_ns"])
            for r in self.query(
                "SELECT path, size, mtime_ns FROM source_files WHERE folder = ?", (folder,)
            )
        }

    def replace_instance(self, info: InstanceInfo, *, spool_path: Path, source: str) -> bool:
        """A person chose other bytes for a held instance not yet sent; False if already sent."""
        now = time.time()
        with self.tx() as conn:
            cur = conn.execute(
                """UPDATE instances SET sha256 = ?, size = ?, spool_path = ?, source = ?,
                   transfer_syntax_uid = ?, received_at = ?, conformance = NULL
                   WHERE sop_instance_uid = ? AND state IN ('spooled', 'refused')""",
                (
                    info.sha256,
                    info.size,
                    str(spool_path),
                    source,
                    info.transfer_syntax_uid,
                    now,
                    info.sop_instance_uid,
                ),
            )
            if cur.rowcount != 1:
                return False
            conn.execute(
                "UPDATE instances SET state = 'spooled' WHERE sop_instance_uid = ?",
                (info.sop_instance_uid,),
            )
            self._touch_study(conn, info.study_instance_uid, "routine", now, None, None)
            return True

    def reopen_refused(self, sop_uid: str, study_uid: str) -> bool:
        """An instance the hub refused, released by a person: send it again."""
        with self.tx() as conn:
            cur = conn.execute(
                "UPDATE instances SET state = 'spooled' WHERE sop_instance_uid = ? "
                "AND state = 'refused'",
                (sop_uid,),
            )
            if cur.rowcount != 1:
                return False
            self._touch_study(conn, study_uid, "routine", time.time(), None, None)
            return True

    def add_duplicate(
        self,
        sop_uid: str,
        sha256: str,
        original_name: str,
        source: str,
        source_file: SourceFile | None = None,
    ) -> None:
        now = time.time()
        with self.tx() as conn:
            conn.execute(
                """INSERT INTO duplicates (sop_instance_uid, sha256, original_name, source,
                   received_at) VALUES (?,?,?,?,?)""",
                (sop_uid, sha256, original_name, source, now),
            )
            if source_file is not None:
                self._record_source_file(conn, source_file, "duplicate", now)
            audit_append(conn, "ingest", "instance.duplicate", sop_uid, sha256=sha256)

    def add_quarantine(
        self,
        *,
        path: Path,
        original_name: str,
        source: str,
        reason: str,
        message: str,
        size: int,
        sha256: str | None,
        sop_uid: str | None,
        at: float | None = None,
        source_file: SourceFile | None = None,
    ) -> None:
        with self.tx() as conn:
            if source_file is not None:
                self._record_source_file(conn, source_file, "quarantined", at or time.time())
            cur = conn.execute(
                """INSERT OR IGNORE INTO quarantine (path, original_name, source, reason, message,
                   size, sha256, sop_instance_uid, quarantined_at) VALUES (?,?,?,?,?,?,?,?,?)""",
                (
                    str(path),
                    original_name,
                    source,
                    reason,
                    message,
                    size,
                    sha256,
                    sop_uid,
                    at or time.time(),
                ),
            )
            if cur.rowcount == 1:
                audit_append(
                    conn,
                    "ingest",
                    "instance.quarantined",
                    sop_uid or f"quarantine:{cur.lastrowid}",
                    outcome="minor_failure",
                    reason=reason,
                    size=size,
                    sha256=sha256,
                )

    def quarantine_paths(self) -> set[str]:
        return {r[0] for r in self.query("SELECT path FROM quarantine")}

    def quarantine_entries(
        self, *, include_resolved: bool = False, reason: str | None = None
    ) -> list[sqlite3.Row]:
        sql = "SELECT * FROM quarantine WHERE 1=1"
        params: list[Any] = []
        if not include_resolved:
            sql += " AND resolution IS NULL"
        if reason:
            sql += " AND reason = ?"
            params.append(reason)
        return self.query(sql + " ORDER BY id", tuple(params))

    def quarantine_entry(self, entry_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM quarantine WHERE id = ?", (entry_id,))
        return rows[0] if rows else None

    def resolve_quarantine(self, entry_id: int, resolution: str, note: str) -> bool:
        with self.tx() as conn:
            cur = conn.execute(
                """UPDATE quarantine SET resolution = ?, resolved_at = ?, resolution_note = ?
                   WHERE id = ? AND resolution IS NULL""",
                (resolution, time.time(), note[:1000], entry_id),
            )
            if cur.rowcount == 1:
                audit_append(conn, "operator", f"quarantine.{resolution}", f"quarantine:{entry_id}")
            return cur.rowcount == 1

    # -- imports and conformance ----------------------------------------------------------

    def start_import(self, kind: str, source: str) -> int:
        with self.tx() as conn:
            cur = conn.execute(
                "INSERT INTO imports (kind, source, started_at) VALUES (?,?,?)",
                (kind, source, time.time()),
            )
            return int(cur.lastrowid or 0)

    def finish_import(self, import_id: int, summary: dict[str, Any]) -> None:
        with self.tx() as conn:
            conn.execute(
                "UPDATE imports SET finished_at = ?, summary = ? WHERE id = ?",
                (time.time(), json.dumps(summary, sort_keys=True), import_id),
            )

    def unchecked_instances(self, limit: int = 50) -> list[sqlite3.Row]:
        return self.query(
            "SELECT sop_instance_uid, spool_path FROM instances WHERE conformance IS NULL "
            "ORDER BY received_at LIMIT ?",
            (limit,),
        )

    def set_conformance(self, sop_uid: str, findings: list[str]) -> None:
        with self.tx() as conn:
            conn.execute(
                "UPDATE instances SET conformance = ? WHERE sop_instance_uid = ?",
                (json.dumps(findings), sop_uid),
            )

    # -- studies --------------------------------------------------------------------------

    def due_studies(self, quiet_period: float, now: float | None = None) -> list[sqlite3.Row]:
        """Receiving studies ready to send: quiet for their quiet period, or declared ready.

        A study's own ``quiet_period`` (from the folder it came from) overrides the agent's;
        ``ready_at`` is set by "send now" and by the end of a C-STORE association (plus grace).
        """
        now = now or time.time()
        return self.query(
            """SELECT * FROM studies WHERE state = 'receiving' AND next_attempt_at <= ?
               AND (last_instance_at <= ? - COALESCE(quiet_period, ?)
                    OR (ready_at IS NOT NULL AND ready_at <= ?))
               ORDER BY (service_level = 'stat') DESC, first_received_at""",
            (now, now, quiet_period, now),
        )

    def mark_ready(self, study_uids: list[str] | None, at: float | None = None) -> int:
        """Declare studies ready at ``at`` (now by default); ``None``: every receiving study."""
        at = time.time() if at is None else at
        with self.tx() as conn:
            if study_uids is None:
                cur = conn.execute(
                    "UPDATE studies SET ready_at = ?, next_attempt_at = 0 "
                    "WHERE state = 'receiving'",
                    (at,),
                )
            else:
                cur = conn.executemany(
                    "UPDATE studies SET ready_at = ?, next_attempt_at = 0 "
                    "WHERE state = 'receiving' AND study_instance_uid = ?",
                    [(at, u) for u in study_uids],
                )
            return int(cur.rowcount)

    def study_instances(self, study_uid: str, state: str | None = None) -> list[sqlite3.Row]:
        if state is None:
            return self.query(
                "SELECT * FROM instances WHERE study_instance_uid = ? ORDER BY received_at",
                (study_uid,),
            )
        return self.query(
            "SELECT * FROM instances WHERE study_instance_uid = ? AND state = ? "
            "ORDER BY received_at",
            (study_uid, state),
        )

    def mark_uploaded(self, sop_uid: str) -> None:
        with self.tx() as conn:
            conn.execute(
                "UPDATE instances SET state = 'uploaded', uploaded_at = ? "
                "WHERE sop_instance_uid = ?",
                (time.time(), sop_uid),
            )

    # -- reports from the hub's feed -----------------------------------------------------------

    def meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM lan_meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def keep_report(self, seq: int, report: dict[str, Any], document: str | None, key: str) -> bool:
        """Keep one report and move the feed cursor (``lan_meta[key]``) past its event, in one
        transaction; False if the report was already held."""
        with self.tx() as conn:
            new = (
                conn.execute(
                    "INSERT OR IGNORE INTO reports (id, seq, study_instance_uid, status, kind, "
                    "title, text, document, hub_received_at, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        int(report["id"]),
                        seq,
                        str(report["study_instance_uid"]),
                        str(report["status"]),
                        str(report["kind"]),
                        str(report.get("title") or "Report"),
                        str(report.get("text") or ""),
                        document,
                        str(report.get("received_at") or ""),
                        time.time(),
                    ),
                ).rowcount
                == 1
            )
            conn.execute(
                "INSERT OR REPLACE INTO lan_meta (key, value) VALUES (?, ?)", (key, str(seq))
            )
        return new

    def study_reports(self, study_uid: str) -> list[sqlite3.Row]:
        """The study's reports, newest first."""
        return self.query(
            "SELECT * FROM reports WHERE study_instance_uid = ? ORDER BY id DESC", (study_uid,)
        )

    def latest_reports(self, limit: int) -> list[sqlite3.Row]:
        """Each study's latest report, newest first."""
        return self.query(
            "SELECT * FROM reports WHERE id IN (SELECT MAX(id) FROM reports "
            "GROUP BY study_instance_uid) ORDER BY id DESC LIMIT ?",
            (limit,),
        )

    def report(self, report_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM reports WHERE id = ?", (report_id,))
        return rows[0] if rows else None

    # -- reports into the facility's PACS ----------------------------------------------------

    def reports_to_store(self, now: float, limit: int = 20) -> list[sqlite3.Row]:
        """Reports not yet stored into the facility's PACS whose (next) try is due, oldest
        first."""
        return self.query(
            """SELECT r.*, s.attempts AS store_attempts FROM reports r
               LEFT JOIN report_stores s ON s.report_id = r.id
               WHERE s.report_id IS NULL OR (s.state = 'retry' AND s.next_try_at <= ?)
               ORDER BY r.id LIMIT ?""",
            (now, limit),
        )

    def study_sample_file(self, study_uid: str) -> Path | None:
        """One spooled file of the study (its patient and study details), if this agent has
        one."""
        for row in self.query(
            "SELECT spool_path FROM instances WHERE study_instance_uid = ? ORDER BY received_at",
            (study_uid,),
        ):
            path = Path(row["spool_path"])
            if path.exists():
                return path
        return None

    def stored_report_before(self, study_uid: str, report_id: int) -> str | None:
        """The SOP Instance UID of the study's latest report stored before ``report_id``."""
        rows = self.query(
            """SELECT sop_instance_uid FROM report_stores WHERE study_instance_uid = ?
               AND report_id < ? AND state = 'stored' ORDER BY report_id DESC LIMIT 1""",
            (study_uid, report_id),
        )
        return str(rows[0]["sop_instance_uid"]) if rows else None

    def record_report_store(
        self,
        report_id: int,
        study_uid: str,
        sop_uid: str,
        state: str,
        *,
        error: str | None = None,
        next_try_at: float | None = None,
    ) -> None:
        now = time.time()
        with self.tx() as conn:
            conn.execute(
                """INSERT INTO report_stores (report_id, study_instance_uid, sop_instance_uid,
                   state, attempts, last_error, next_try_at, stored_at)
                   VALUES (?, ?, ?, ?, 1, ?, ?, ?)
                   ON CONFLICT (report_id) DO UPDATE SET state = excluded.state,
                   attempts = report_stores.attempts + 1, last_error = excluded.last_error,
                   next_try_at = excluded.next_try_at, stored_at = excluded.stored_at""",
                (
                    report_id,
                    study_uid,
                    sop_uid,
                    state,
                    error,
                    next_try_at,
                    now if state == "stored" else None,
                ),
            )
            audit_append(
                conn,
                "reports",
                f"report.pacs_{state}",
                study_uid,
                outcome="success" if state == "stored" else "minor_failure",
                report=report_id,
                reason=error,
            )

    def report_store_state(self, report_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM report_stores WHERE report_id = ?", (report_id,))
        return rows[0] if rows else None

    def mark_spooled(self, sop_uids: list[str]) -> None:
        with self.tx() as conn:
            conn.executemany(
                "UPDATE instances SET state = 'spooled' WHERE sop_instance_uid = ?",
                [(u,) for u in sop_uids],
            )

    def mark_refused(self, sop_uid: str) -> None:
        with self.tx() as conn:
            conn.execute(
                "UPDATE instances SET state = 'refused' WHERE sop_instance_uid = ?", (sop_uid,)
            )

    def mark_committed(self, study_uid: str, last_instance_at: float, hub_status: str) -> bool:
        """Committed, unless an instance arrived meanwhile (then it stays receiving)."""
        with self.tx() as conn:
            cur = conn.execute(
                """UPDATE studies SET state = 'committed', committed_at = ?, commits = commits + 1,
                   attempts = 0, last_error = NULL, hub_status = ?, ready_at = NULL
                   WHERE study_instance_uid = ? AND last_instance_at = ?""",
                (time.time(), hub_status, study_uid, last_instance_at),
            )
            if cur.rowcount == 1:
                audit_append(conn, "uplink", "study.committed", study_uid)
            return cur.rowcount == 1

    def mark_delivered(self, study_uid: str, hub_status: str) -> None:
        with self.tx() as conn:
            cur = conn.execute(
                """UPDATE studies SET state = 'delivered', delivered_at = ?, hub_status = ?
                   WHERE study_instance_uid = ? AND state = 'committed'""",
                (time.time(), hub_status, study_uid),
            )
            if cur.rowcount == 1:
                audit_append(conn, "uplink", "study.delivered", study_uid)

    def set_hub_status(self, study_uid: str, hub_status: str) -> None:
        with self.tx() as conn:
            conn.execute(
                "UPDATE studies SET hub_status = ? WHERE study_instance_uid = ?",
                (hub_status, study_uid),
            )

    def defer_study(self, study_uid: str, error: str, delay: float) -> None:
        with self.tx() as conn:
            conn.execute(
                """UPDATE studies SET attempts = attempts + 1, last_error = ?,
                   next_attempt_at = ? WHERE study_instance_uid = ?""",
                (error[:1000], time.time() + delay, study_uid),
            )

    def committed_studies(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM studies WHERE state = 'committed' ORDER BY committed_at")
