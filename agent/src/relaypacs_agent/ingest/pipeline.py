"""Take one complete file in: validate, deduplicate, spool, record, then let go of the original.

The order makes a crash at any point harmless: the spool copy is content-addressed and written
before the catalogue row, and the original is removed only after the row is committed. A file
seen again after a crash is recognised (same UID, same bytes, same source path) and just removed.
Every file ends as exactly one of: an instance, a duplicate, or a quarantine entry.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from relaypacs_agent.ingest.files import fsync_dir, move_durable, put_in_spool, sha256_of
from relaypacs_agent.store.db import Store
from relaypacs_shared.dicom import validate_file
from relaypacs_shared.errors import DicomValidationError

log = structlog.get_logger("relaypacs.agent.ingest")

Outcome = Literal["accepted", "duplicate", "quarantined", "replayed"]


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    reason: str = ""
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None


class Ingestor:
    def __init__(
        self,
        store: Store,
        *,
        spool_dir: Path,
        quarantine_dir: Path,
        max_instance_bytes: int,
        service_level: str = "routine",
    ) -> None:
        self.store = store
        self.spool_dir = spool_dir
        self.quarantine_dir = quarantine_dir
        self.max_instance_bytes = max_instance_bytes
        self.service_level = service_level
        spool_dir.mkdir(parents=True, exist_ok=True)
        quarantine_dir.mkdir(parents=True, exist_ok=True)

    def ingest(self, path: Path, source: str = "folder") -> IngestResult:
        try:
            info = validate_file(path, max_bytes=self.max_instance_bytes)
        except DicomValidationError as exc:
            self.quarantine(path, source=source, reason=exc.reason, message=exc.message)
            return IngestResult("quarantined", exc.reason)
        bound = log.bind(study_uid=info.study_instance_uid, sop_uid=info.sop_instance_uid)
        existing = self.store.get_instance(info.sop_instance_uid)
        if existing is not None:
            if existing["sha256"] == info.sha256:
                if existing["source_path"] != str(path):
                    self.store.add_duplicate(info.sop_instance_uid, info.sha256, path.name, source)
                    outcome: Outcome = "duplicate"
                else:
                    outcome = "replayed"  # our own crash between record and unlink
                path.unlink(missing_ok=True)
                fsync_dir(path.parent)
                bound.info("instance_" + outcome)
                return IngestResult(outcome, "", info.sop_instance_uid, info.study_instance_uid)
            self.quarantine(
                path,
                source=source,
                reason="conflict",
                message="an instance with this SOP Instance UID but different content is already "
                "held; a person must decide which one is right",
                sha256=info.sha256,
                sop_uid=info.sop_instance_uid,
            )
            return IngestResult("quarantined", "conflict", info.sop_instance_uid)
        spooled = put_in_spool(path, self.spool_dir, info.sha256)
        self.store.add_instance(
            info,
            spool_path=spooled,
            source=source,
            source_path=str(path),
            service_level=self.service_level,
        )
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
        bound.info("instance_accepted", size=info.size, modality=info.modality)
        return IngestResult("accepted", "", info.sop_instance_uid, info.study_instance_uid)

    def quarantine(
        self,
        path: Path,
        *,
        source: str,
        reason: str,
        message: str,
        sha256: str | None = None,
        sop_uid: str | None = None,
    ) -> Path:
        """Move the file aside with a sidecar saying why; never delete it."""
        size = path.stat().st_size
        if sha256 is None:
            sha256 = sha256_of(path)
        now = time.time()
        folder = self.quarantine_dir / time.strftime("%Y%m%d", time.gmtime(now))
        dest = folder / f"{uuid.uuid4().hex[:12]}_{path.name}"
        sidecar = dest.with_name(dest.name + ".reason.json")
        folder.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(
            json.dumps(
                {
                    "original_name": path.name,
                    "source": source,
                    "reason": reason,
                    "message": message,
                    "size": size,
                    "sha256": sha256,
                    "sop_instance_uid": sop_uid,
                    "quarantined_at": now,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        move_durable(path, dest)
        self.store.add_quarantine(
            path=dest,
            original_name=path.name,
            source=source,
            reason=reason,
            message=message,
            size=size,
            sha256=sha256,
            sop_uid=sop_uid,
            at=now,
        )
        log.warning("file_quarantined", reason=reason, size=size)
        return dest

    def reconcile_quarantine(self) -> int:
        """Record quarantined files whose catalogue row was lost to a crash (sidecars say why)."""
        known = self.store.quarantine_paths()
        added = 0
        for sidecar in self.quarantine_dir.glob("*/*.reason.json"):
            dest = sidecar.with_name(sidecar.name.removesuffix(".reason.json"))
            if str(dest) in known:
                continue
            if not dest.exists():
                sidecar.unlink()  # the move never happened: the original is still in the inbox
                continue
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            self.store.add_quarantine(
                path=dest,
                original_name=meta["original_name"],
                source=meta["source"],
                reason=meta["reason"],
                message=meta["message"],
                size=meta["size"],
                sha256=meta.get("sha256"),
                sop_uid=meta.get("sop_instance_uid"),
                at=meta.get("quarantined_at"),
            )
            added += 1
        return added
