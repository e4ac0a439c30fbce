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
from pathlib import Path
from typing import Any

import sqlite_utils

from relaypacs_agent.store.schema import MIGRATIONS
from relaypacs_shared.dicom import InstanceInfo


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

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._lock:
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            done = {r[0] for r in self.conn.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS:
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
    ) -> None:
        now = time.time()
        with self.tx() as conn:
            conn.execute(
                """INSERT INTO instances (sop_instance_uid, study_instance_uid, series_instance_uid,
                   sop_class_uid, transfer_syntax_uid, modality, sha256, size, spool_path, source,
                   source_path, received_at, warnings)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)""",
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
                ),
            )
            # A late instance of a committed study re-opens it as a follow-up delivery.
            conn.execute(
                """INSERT INTO studies (study_instance_uid, state, service_level,
                   first_received_at, last_instance_at) VALUES (?, 'receiving', ?, ?, ?)
                   ON CONFLICT (study_instance_uid) DO UPDATE SET
                     state = 'receiving', last_instance_at = excluded.last_instance_at,
                     service_level = CASE WHEN excluded.service_level = 'stat' THEN 'stat'
                                          ELSE studies.service_level END,
                     next_attempt_at = 0""",
                (info.study_instance_uid, service_level, now, now),
            )

    def add_duplicate(self, sop_uid: str, sha256: str, original_name: str, source: str) -> None:
        with self.tx() as conn:
            conn.execute(
                """INSERT INTO duplicates (sop_instance_uid, sha256, original_name, source,
                   received_at) VALUES (?,?,?,?,?)""",
                (sop_uid, sha256, original_name, source, time.time()),
            )

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
    ) -> None:
        with self.tx() as conn:
            conn.execute(
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

    def quarantine_paths(self) -> set[str]:
        return {r[0] for r in self.query("SELECT path FROM quarantine")}

    # -- studies --------------------------------------------------------------------------

    def due_studies(self, quiet_period: float, now: float | None = None) -> list[sqlite3.Row]:
        now = now or time.time()
        return self.query(
            """SELECT * FROM studies WHERE state = 'receiving'
               AND last_instance_at <= ? AND next_attempt_at <= ?
               ORDER BY (service_level = 'stat') DESC, first_received_at""",
            (now - quiet_period, now),
        )

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
                   attempts = 0, last_error = NULL, hub_status = ?
                   WHERE study_instance_uid = ? AND last_instance_at = ?""",
                (time.time(), hub_status, study_uid, last_instance_at),
            )
            return cur.rowcount == 1

    def mark_delivered(self, study_uid: str, hub_status: str) -> None:
        with self.tx() as conn:
            conn.execute(
                """UPDATE studies SET state = 'delivered', delivered_at = ?, hub_status = ?
                   WHERE study_instance_uid = ? AND state = 'committed'""",
                (time.time(), hub_status, study_uid),
            )

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
