"""What the agent holds and where each study stands, read from its catalogue."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from relaypacs_agent.store.reader import CatalogueReader

_EMPTY_TOTALS: dict[str, Any] = {
    "instances": 0,
    "instances_by_state": {},
    "duplicates": 0,
    "quarantined": 0,
    "quarantine_reasons": {},
    "studies": 0,
    "studies_by_state": {},
}


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
    with CatalogueReader(db_path) as reader:
        by_state = reader.instances_by_state()
        quarantined = reader.open_quarantine()
        findings = reader.conformance_findings()
        duplicates = reader.duplicates()
        studies = []
        for s in reader.studies():
            counts = reader.study_instances_by_state(s.study_instance_uid)
            hub = json.loads(s.hub_status) if s.hub_status else None
            progress = reader.progress(s.study_instance_uid)
            studies.append(
                {
                    "study_instance_uid": s.study_instance_uid,
                    "state": s.state,
                    "service_level": s.service_level,
                    "instances": sum(counts.values()),
                    "instances_by_state": counts,
                    "bytes": reader.study_bytes(s.study_instance_uid),
                    "attempts": s.attempts,
                    "commits": s.commits,
                    "ready_at": s.ready_at,
                    "metadata": json.loads(s.metadata),
                    "last_error": s.last_error,
                    "committed_at": s.committed_at,
                    "delivered_at": s.delivered_at,
                    "transfer": progress.as_dict() if progress is not None else None,
                    "destinations": [
                        {
                            k: d[k]
                            for k in ("destination", "state", "confirmed_instances", "last_error")
                        }
                        for d in (hub or {}).get("destinations", [])
                    ],
                }
            )
        reasons = reader.open_quarantine_reasons()
        pacs = reader.pacs_reports()
    reports_to_pacs: dict[str, Any] = (
        {"by_state": pacs.by_state, "last_error": pacs.last_error} if pacs is not None else {}
    )
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
