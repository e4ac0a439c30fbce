"""The hub's audit log: append hash-chained records to ``audit_log``, read and verify them.

Appends are serialised across processes and replicas: on PostgreSQL by a transaction-scoped
advisory lock taken in the transaction that reads the last record and inserts the next; on SQLite
by its single write transaction (and ``seq`` being the primary key: a writer that lost the race
gets a conflict and chains again). Records never carry patient names or IDs.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import structlog
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.db.models import AuditLogEntry
from relaypacs_shared.audit import (
    GENESIS,
    AuditRecord,
    ChainedRecord,
    canonical_json,
    record_hash,
    utc_now_iso,
)

log = structlog.get_logger("relaypacs.hub.audit")

# pg_advisory_xact_lock key: "RPAUDIT" folded into a bigint.
_LOCK_KEY = 0x5250415544495400 & 0x7FFFFFFFFFFFFFFF
HOST = socket.gethostname()


async def _append(session: AsyncSession, fields: dict[str, Any]) -> ChainedRecord:
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    last = (
        await session.execute(
            select(AuditLogEntry.seq, AuditLogEntry.hash)
            .order_by(AuditLogEntry.seq.desc())
            .limit(1)
        )
    ).first()
    seq, prev_hash = (last[0] + 1, last[1]) if last is not None else (1, GENESIS)
    record = AuditRecord(seq=seq, at=utc_now_iso(), **fields)
    entry = ChainedRecord(record, prev_hash, record_hash(prev_hash, record))
    session.add(
        AuditLogEntry(
            seq=seq,
            at=record.at,
            actor=record.actor,
            action=record.action,
            target=record.target,
            outcome=record.outcome,
            source=record.source,
            details_json=canonical_json(record.details).decode("utf-8"),
            prev_hash=prev_hash,
            hash=entry.hash,
        )
    )
    await session.flush()
    return entry


async def audit(
    sessionmaker_or_session: async_sessionmaker[AsyncSession] | AsyncSession,
    actor: str,
    action: str,
    target: str,
    outcome: str = "success",
    source: str | None = None,
    **details: Any,
) -> ChainedRecord:
    """Append one record. Given a session, the record joins its transaction (the caller commits);
    given a sessionmaker, it is committed in a transaction of its own."""
    fields: dict[str, Any] = {
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "source": source or HOST,
        "details": details,
    }
    if isinstance(sessionmaker_or_session, AsyncSession):
        return await _append(sessionmaker_or_session, fields)
    for _ in range(20):
        async with sessionmaker_or_session() as session:
            try:
                async with session.begin():
                    entry = await _append(session, fields)
            except IntegrityError:
                continue  # another writer took this seq first: chain after it
            return entry
    raise RuntimeError("could not append to the audit log after concurrent appends")


def _chained(row: AuditLogEntry) -> ChainedRecord:
    record = AuditRecord(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        source=row.source,
        details=json.loads(row.details_json),
    )
    return ChainedRecord(record, row.prev_hash, row.hash)


async def read_log(
    sessionmaker: async_sessionmaker[AsyncSession], batch: int = 1000
) -> AsyncIterator[ChainedRecord]:
    """Every record in seq order, in batches (the log can be long)."""
    after = 0
    while True:
        async with sessionmaker() as session:
            rows = list(
                await session.scalars(
                    select(AuditLogEntry)
                    .where(AuditLogEntry.seq > after)
                    .order_by(AuditLogEntry.seq)
                    .limit(batch)
                )
            )
        if not rows:
            return
        for row in rows:
            try:
                yield _chained(row)
            except ValueError as exc:  # a row edited into an invalid record
                log.warning("audit_row_invalid", seq=row.seq, error=str(exc))
                yield ChainedRecord(
                    AuditRecord(seq=max(row.seq, 1), at=row.at, actor="?", action="?", target="?"),
                    row.prev_hash,
                    "invalid",
                )
        after = rows[-1].seq
