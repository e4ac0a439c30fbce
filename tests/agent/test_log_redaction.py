"""The agent's ingest logs name no file: exported files are often named after the patient."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

from structlog.testing import capture_logs

from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.ingest.watcher import InboxWatcher, _Seen, file_ref

if TYPE_CHECKING:
    from .conftest import AgentDirs

NAME = "DOE_JANE_PHITEST"


def test_ingest_failures_log_a_file_reference_not_the_name(
    ingestor: Ingestor, dirs: AgentDirs
) -> None:
    watcher = InboxWatcher(dirs.inbox, ingestor, settle_seconds=1.0, scan_interval=1.0)
    path = dirs.inbox / NAME / f"{NAME}_001.dcm"
    locked = PermissionError(errno.EACCES, "Permission denied", str(path))
    bug = ValueError(f"cannot parse {path}: PatientName {NAME}")
    with capture_logs() as logs:
        watcher._failed(path, _Seen(size=1, mtime_ns=1, stable_since=0.0), locked, now=0.0)
        watcher._failed(path, _Seen(size=1, mtime_ns=1, stable_since=0.0), bug, now=0.0)
    assert [e["event"] for e in logs] == ["ingest_deferred", "ingest_failed"]
    assert all(e["file_ref"] == file_ref(path) for e in logs)
    assert "PHITEST" not in repr(logs)


def test_quarantine_logs_its_id_not_the_file_name(ingestor: Ingestor, dirs: AgentDirs) -> None:
    path = dirs.inbox / f"{NAME} referral.txt"
    path.write_text("Referral for Jane Doe.\n")
    with capture_logs() as logs:
        dest = ingestor.quarantine(path, source="folder:inbox", reason="not_dicom", message="x")
    (event,) = [e for e in logs if e["event"] == "file_quarantined"]
    assert dest.name.startswith(event["quarantine_id"] + "_")
    assert "PHITEST" not in repr(logs) and "Jane" not in repr(logs)
    assert Path(dest).read_text() == "Referral for Jane Doe.\n"
