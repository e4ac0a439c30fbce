"""What the agent holds and where each study stands, read from its catalogue."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from relaypacs_agent.uplink.progress import transfer_progress

_EMPTY_TOTALS: dict[str, Any] = {
    "instances": 0,
    "instances_by_state": {},
    "duplicates": 0,
    "quarantined": 0,
    "quarantine_reasons": {},
    "studies": 0,
    "studies_by_state": {},
}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def read_status(db_path: Path, min_free_bytes: int | None = None) -> dict[str, Any]:
    if not db_path.exists():
        return {"database": str(db_path), "exists": False, "studies": [], "totals": _EMPTY_TOTALS}
    disk: dict[str, Any] = {}
    if min_free_bytes is not None:
        free = shutil.disk_usage(db_path.parent).free
        disk = {
            "free_bytes": free,
            "reserve_bytes": min_free_bytes,
            "refusing": free < min_free_bytes,
        }
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        by_state = {
            r["state"]: r["n"]
            for r in conn.execute("SELECT state, COUNT(*) AS n FROM instances GROUP BY state")
        }
        # A database not yet migrated to 002 (status run before the agent's first start).
        migrated = "resolution" in _columns(conn, "quarantine")
        open_q = " WHERE resolution IS NULL" if migrated else ""
        # open_q is one of two constants above, never input.
        quarantined = conn.execute(f"SELECT COUNT(*) FROM quarantine{open_q}").fetchone()[0]  # noqa: S608
        findings = (
            conn.execute(
                "SELECT COUNT(*) FROM instances WHERE conformance IS NOT NULL "
                "AND conformance != '[]'"
            ).fetchone()[0]
            if migrated
            else 0
        )
        duplicates = conn.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0]
        studies = []
        for s in conn.execute("SELECT * FROM studies ORDER BY first_received_at"):
            counts = {
                r["state"]: r["n"]
                for r in conn.execute(
                    "SELECT state, COUNT(*) AS n, SUM(size) AS b FROM instances "
                    "WHERE study_instance_uid = ? GROUP BY state",
                    (s["study_instance_uid"],),
                )
            }
            size = conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM instances WHERE study_instance_uid = ?",
                (s["study_instance_uid"],),
            ).fetchone()[0]
            hub = json.loads(s["hub_status"]) if s["hub_status"] else None
            studies.append(
                {
                    "study_instance_uid": s["study_instance_uid"],
                    "state": s["state"],
                    "service_level": s["service_level"],
                    "instances": sum(counts.values()),
                    "instances_by_state": counts,
                    "bytes": size,
                    "attempts": s["attempts"],
                    "commits": s["commits"],
                    "ready_at": s["ready_at"] if migrated else None,
                    "metadata": json.loads(s["metadata"]) if migrated else {},
                    "last_error": s["last_error"],
                    "committed_at": s["committed_at"],
                    "delivered_at": s["delivered_at"],
                    "transfer": transfer_progress(conn, s["study_instance_uid"]),
                    "destinations": [
                        {
                            k: d[k]
                            for k in ("destination", "state", "confirmed_instances", "last_error")
                        }
                        for d in (hub or {}).get("destinations", [])
                    ],
                }
            )
        reasons = {
            r["reason"]: r["n"]
            for r in conn.execute(
                f"SELECT reason, COUNT(*) AS n FROM quarantine{open_q} GROUP BY reason"  # noqa: S608
            )
        }
        reports_to_pacs: dict[str, Any] = {}
        if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'report_stores'"
        ).fetchone():
            problem = conn.execute(
                "SELECT last_error FROM report_stores WHERE state IN ('retry', 'refused') "
                "ORDER BY report_id DESC LIMIT 1"
            ).fetchone()
            reports_to_pacs = {
                "by_state": {
                    r["state"]: r["n"]
                    for r in conn.execute(
                        "SELECT state, COUNT(*) AS n FROM report_stores GROUP BY state"
                    )
                },
                "last_error": problem["last_error"] if problem else None,
            }
    finally:
        conn.close()
    return {
        "reports_to_pacs": reports_to_pacs,
        "database": str(db_path),
        "exists": True,
        "totals": {
            "instances": sum(by_state.values()),
            "instances_by_state": by_state,
            "duplicates": duplicates,
            "quarantined": quarantined,
            "quarantine_reasons": reasons,
            "studies": len(studies),
            "studies_by_state": _count(s["state"] for s in studies),
            "conformance_findings": findings,
        },
        "disk": disk,
        "studies": studies,
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
