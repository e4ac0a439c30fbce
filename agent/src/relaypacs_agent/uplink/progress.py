"""Per-study transfer progress for ``relaypacs-agent status``: bytes, rate, ETA."""

from __future__ import annotations

import sqlite3
from typing import Any


def transfer_progress(conn: sqlite3.Connection, study_uid: str) -> dict[str, Any] | None:
    """Progress of one study's uplink, or None before its first manifest answer."""
    try:
        row = conn.execute(
            "SELECT total_bytes, sent_bytes, wire_bytes, rate_bps, started_at, updated_at "
            "FROM transfer_stats WHERE study_instance_uid = ?",
            (study_uid,),
        ).fetchone()
        partial = conn.execute(
            "SELECT COALESCE(SUM(CAST(offset AS REAL) / length * raw_bytes), 0) FROM segments "
            "WHERE study_instance_uid = ? AND state = 'uploading' AND length > 0",
            (study_uid,),
        ).fetchone()[0]
    except sqlite3.OperationalError:
        return None  # the uplink has not created its tables yet
    if row is None:
        return None
    total, sent, wire, rate, _started, _updated = row
    done = min(total, sent + int(partial))
    remaining = max(total - done, 0)
    # rate is measured on the wire (compressed); scale the ETA by the compression seen so far.
    ratio = (wire / sent) if sent else 1.0
    eta = (remaining * ratio / rate) if rate > 0 and remaining else (0.0 if not remaining else None)
    return {
        "bytes_to_send": total,
        "bytes_sent": done,
        "percent": round(100.0 * done / total, 1) if total else 100.0,
        "wire_bytes": wire,
        "rate_bytes_per_s": round(rate),
        "eta_seconds": None if eta is None else round(eta),
    }
