"""What the PWA's uploads keep in the catalogue: batches (one per study picked on a phone) and
their files' tus uploads, with where each upload stands and what became of its file, and the
catalogue's view of the studies a batch brought.

The flow (tus, the ingest, crash recovery) is :mod:`relaypacs_agent.web.batches`'; this module
reads and writes the rows, each change in one transaction with its audit record where it has
one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from relaypacs_agent.store.audit import append as audit_append
from relaypacs_agent.store.db import Store
from relaypacs_agent.store.uplink import UplinkStore


@dataclass(frozen=True)
class WebBatch:
    id: str
    created_by: str
    created_at: float
    service_level: str
    clinical_history: str
    referring_clinician: str
    label: str
    expected_files: int
    sent_at: float | None


@dataclass(frozen=True)
class WebUpload:
    id: str
    batch_id: str
    created_by: str
    filename: str
    length: int
    offset: int
    state: str  # open | done | terminated
    outcome: str | None  # accepted | duplicate | quarantined | replayed
    reason: str | None
    message: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class HeldInstance:
    """An instance in the catalogue, as far as an upload's recovery needs it."""

    sop_instance_uid: str
    study_instance_uid: str
    size: int


@dataclass(frozen=True)
class StudyHolding:
    """What the catalogue holds of one study and how far its uplink went."""

    state: str | None  # the study's state; None before it has a row
    last_error: str | None
    instances: int
    bytes: int
    progress: dict[str, Any] | None  # relaypacs_agent.store.uplink.TransferProgress


_Row = TypeVar("_Row", WebBatch, WebUpload)


def _row(cls: type[_Row], row: sqlite3.Row) -> _Row:
    return cls(*(row[f.name] for f in fields(cls)))


class WebBatchStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- batches ----------------------------------------------------------------------------

    def add_batch(self, batch: WebBatch, client: str) -> None:
        """Keep a new batch, audited in the same transaction."""
        with self.store.tx() as conn:
            conn.execute(
                """INSERT INTO web_batches (id, created_by, created_at, service_level,
                   clinical_history, referring_clinician, label, expected_files)
                   VALUES (?,?,?,?,?,?,?,?)""",
                (
                    batch.id,
                    batch.created_by,
                    batch.created_at,
                    batch.service_level,
                    batch.clinical_history,
                    batch.referring_clinician,
                    batch.label,
                    batch.expected_files,
                ),
            )
            audit_append(
                conn,
                batch.created_by,
                "lan.batch_created",
                batch.id,
                source=client,
                service_level=batch.service_level,
                expected_files=batch.expected_files,
            )

    def batch(self, batch_id: str) -> WebBatch | None:
        rows = self.store.query("SELECT * FROM web_batches WHERE id = ?", (batch_id,))
        return _row(WebBatch, rows[0]) if rows else None

    def batch_ids(self, created_by: str | None, limit: int) -> list[str]:
        """The latest batches' ids, newest first: everyone's, or ``created_by``'s."""
        if created_by is None:
            rows = self.store.query(
                "SELECT id FROM web_batches ORDER BY created_at DESC LIMIT ?", (limit,)
            )
        else:
            rows = self.store.query(
                "SELECT id FROM web_batches WHERE created_by = ? ORDER BY created_at DESC LIMIT ?",
                (created_by, limit),
            )
        return [r["id"] for r in rows]

    def batch_uploads(self, batch_id: str) -> list[WebUpload]:
        """The batch's uploads, but those terminated."""
        rows = self.store.query(
            "SELECT * FROM web_uploads WHERE batch_id = ? AND state != 'terminated'", (batch_id,)
        )
        return [_row(WebUpload, r) for r in rows]

    def sendable_study_uids(self, batch_id: str) -> list[str]:
        """The studies the batch's files went into (quarantined files went into none)."""
        return [
            r["study_instance_uid"]
            for r in self.store.query(
                "SELECT DISTINCT study_instance_uid FROM web_uploads WHERE batch_id = ? "
                "AND study_instance_uid IS NOT NULL AND outcome != 'quarantined'",
                (batch_id,),
            )
        ]

    def mark_sent(self, batch_id: str, at: float, username: str, client: str, studies: int) -> None:
        """The batch was sent now (the first time counts), audited in the same transaction."""
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE web_batches SET sent_at = COALESCE(sent_at, ?) WHERE id = ?",
                (at, batch_id),
            )
            audit_append(conn, username, "lan.batch_sent", batch_id, source=client, studies=studies)

    # -- studies and instances --------------------------------------------------------------

    def study_holding(self, study_uid: str) -> StudyHolding:
        rows = self.store.query("SELECT * FROM studies WHERE study_instance_uid = ?", (study_uid,))
        held = self.store.query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM instances "
            "WHERE study_instance_uid = ?",
            (study_uid,),
        )[0]
        progress = UplinkStore(self.store).progress(study_uid)
        study = rows[0] if rows else None
        return StudyHolding(
            state=study["state"] if study is not None else None,
            last_error=study["last_error"] if study is not None else None,
            instances=held["n"],
            bytes=held["bytes"],
            progress=progress.as_dict() if progress is not None else None,
        )

    def instance_from(self, source_path: str) -> HeldInstance | None:
        """The instance taken in from ``source_path``, if one was."""
        rows = self.store.query(
            "SELECT sop_instance_uid, study_instance_uid, size FROM instances "
            "WHERE source_path = ?",
            (source_path,),
        )
        if not rows:
            return None
        r = rows[0]
        return HeldInstance(r[0], r[1], r[2])

    def has_instance_from(self, source_path: str) -> bool:
        return bool(
            self.store.query("SELECT 1 FROM instances WHERE source_path = ?", (source_path,))
        )

    # -- uploads ----------------------------------------------------------------------------

    def add_upload(
        self, upload_id: str, batch_id: str, created_by: str, filename: str, length: int, at: float
    ) -> None:
        with self.store.tx() as conn:
            conn.execute(
                """INSERT INTO web_uploads (id, batch_id, created_by, filename, length,
                   created_at, updated_at) VALUES (?,?,?,?,?,?,?)""",
                (upload_id, batch_id, created_by, filename, length, at, at),
            )

    def upload(self, upload_id: str) -> WebUpload | None:
        rows = self.store.query("SELECT * FROM web_uploads WHERE id = ?", (upload_id,))
        return _row(WebUpload, rows[0]) if rows else None

    def set_offset(self, upload_id: str, offset: int, at: float) -> None:
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE web_uploads SET offset = ?, updated_at = ? WHERE id = ?",
                (offset, at, upload_id),
            )

    def finish_upload(
        self,
        upload: WebUpload,
        *,
        outcome: str,
        reason: str | None,
        message: str | None,
        sop_instance_uid: str | None,
        study_instance_uid: str | None,
        at: float,
        client: str,
    ) -> None:
        """An open upload's file was taken in (``outcome``): the upload is done, with its whole
        length as offset, audited in the same transaction."""
        with self.store.tx() as conn:
            conn.execute(
                """UPDATE web_uploads SET state = 'done', offset = length, outcome = ?,
                   reason = ?, message = ?, sop_instance_uid = ?, study_instance_uid = ?,
                   updated_at = ? WHERE id = ? AND state = 'open'""",
                (
                    outcome,
                    reason,
                    message,
                    sop_instance_uid,
                    study_instance_uid,
                    at,
                    upload.id,
                ),
            )
            audit_append(
                conn,
                upload.created_by,
                "lan.upload_received",
                upload.id,
                outcome="success" if outcome != "quarantined" else "minor_failure",
                source=client,
                batch=upload.batch_id,
                result=outcome,
                reason=reason,
                size=upload.length,
            )

    def terminate_upload(self, upload_id: str, at: float) -> bool:
        """Mark an open upload terminated; False if it was not open."""
        with self.store.tx() as conn:
            cur = conn.execute(
                "UPDATE web_uploads SET state = 'terminated', updated_at = ? "
                "WHERE id = ? AND state = 'open'",
                (at, upload_id),
            )
        return cur.rowcount == 1

    def open_uploads(self) -> list[tuple[str, int]]:
        """Every open upload's id and length."""
        return [
            (r["id"], r["length"])
            for r in self.store.query("SELECT id, length FROM web_uploads WHERE state = 'open'")
        ]

    def idle_upload_ids(self, before: float) -> list[str]:
        """Open uploads not touched since ``before``."""
        rows = self.store.query(
            "SELECT id FROM web_uploads WHERE state = 'open' AND updated_at < ?", (before,)
        )
        return [r["id"] for r in rows]

    def open_upload_totals(self) -> tuple[int, int]:
        """How many uploads are open, and the bytes they still expect."""
        row = self.store.query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(length - offset), 0) AS left "
            "FROM web_uploads WHERE state = 'open'"
        )[0]
        return row["n"], row["left"]
