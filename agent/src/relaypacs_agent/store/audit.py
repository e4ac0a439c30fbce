"""The agent's audit log: hash-chained records in the catalogue's ``audit_log`` table.

:func:`append` runs inside a write transaction the caller already holds (``Store.tx()``, which is
``BEGIN IMMEDIATE`` on the single writer), so the record lands with the change it describes and
no other writer can chain in between: the ``conn`` it takes is the handle ``Store.tx()`` yields,
and only the store layer holds one. Records never carry patient names or IDs, nor file names
(which often do).
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relaypacs_shared.audit import (
    GENESIS,
    AuditRecord,
    ChainedRecord,
    canonical_json,
    record_hash,
    utc_now_iso,
)

if TYPE_CHECKING:
    from relaypacs_agent.store.db import Store

HOST = socket.gethostname()


@dataclass(frozen=True)
class WrappedRecord:
    """The audit record of a file that came without a DICOM file header and was given one."""

    at: str
    actor: str
    sop_instance_uid: str
    details: dict[str, Any]  # transfer_syntax, came_from, original_sha256, ...


def append(
    conn: sqlite3.Connection,
    actor: str,
    action: str,
    target: str,
    outcome: str = "success",
    source: str | None = None,
    **details: Any,
) -> ChainedRecord:
    """Append one record in the caller's open write transaction."""
    last = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev_hash = (last[0] + 1, last[1]) if last is not None else (1, GENESIS)
    record = AuditRecord(
        seq=seq,
        at=utc_now_iso(),
        actor=actor,
        action=action,
        target=target,
        outcome=outcome,
        source=source or HOST,
        details={k: v for k, v in details.items() if v is not None},
    )
    digest = record_hash(prev_hash, record)
    conn.execute(
        """INSERT INTO audit_log (seq, at, actor, action, target, outcome, source, details,
           prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?)""",
        (
            seq,
            record.at,
            actor,
            action,
            target,
            outcome,
            record.source,
            canonical_json(record.details).decode("utf-8"),
            prev_hash,
            digest,
        ),
    )
    return ChainedRecord(record, prev_hash, digest)


def audit(store: Store, actor: str, action: str, target: str, **kwargs: Any) -> ChainedRecord:
    """Append one record in a transaction of its own."""
    with store.tx() as conn:
        return append(conn, actor, action, target, **kwargs)


def read_log(store: Store, batch: int = 1000) -> Iterator[ChainedRecord]:
    """Every record in seq order."""
    after = 0
    while True:
        rows = store.query(
            "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, batch)
        )
        if not rows:
            return
        for row in rows:
            try:
                record = AuditRecord(
                    seq=row["seq"],
                    at=row["at"],
                    actor=row["actor"],
                    action=row["action"],
                    target=row["target"],
                    outcome=row["outcome"],
                    source=row["source"],
                    details=json.loads(row["details"]),
                )
                yield ChainedRecord(record, row["prev_hash"], row["hash"])
            except ValueError:  # edited into something that is no record at all
                bad = AuditRecord(seq=max(row["seq"], 1), at="", actor="?", action="?", target="?")
                yield ChainedRecord(bad, row["prev_hash"], "invalid")
        after = rows[-1]["seq"]


def wrapped_records(store: Store) -> list[WrappedRecord]:
    """Every ``instance.wrapped`` record, in seq order."""
    rows = store.query(
        "SELECT at, actor, target, details FROM audit_log WHERE action = 'instance.wrapped' "
        "ORDER BY seq"
    )
    return [WrappedRecord(r["at"], r["actor"], r["target"], json.loads(r["details"])) for r in rows]
