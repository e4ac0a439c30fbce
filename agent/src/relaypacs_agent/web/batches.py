"""What the PWA sends: batches (one per study picked on a phone, with its service level and
clinical metadata) and their files, received with tus and taken in by the ingestor.

A file is the agent's once its last byte is written: it is validated, spooled or quarantined
with its reason exactly like a file dropped in the inbox, and its outcome is kept on the upload
row so the phone can show it. A crash between the last byte and the ingest is finished at the
next start (:meth:`BatchService.recover`).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from relaypacs_agent.ingest.pipeline import Ingestor, IngestResult, Source
from relaypacs_agent.store.db import Store
from relaypacs_agent.store.web_batches import WebBatch, WebBatchStore, WebUpload
from relaypacs_agent.web import wire
from relaypacs_shared.refusals import words

log = structlog.get_logger("relaypacs.agent.web")


def safe_filename(name: str) -> str:
    """A browser-supplied name reduced to something safe to show and to keep on disk."""
    base = re.split(r"[\\/]", name)[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(c for c in base if c.isprintable() and c not in '<>:"|?*')
    return base.strip().lstrip(".")[:128] or "upload"


class BatchService:
    def __init__(
        self,
        store: Store,
        ingestor: Ingestor,
        upload_dir: Path,
        facility: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.store = store
        self.db = WebBatchStore(store)
        self.ingestor = ingestor
        self.upload_dir = upload_dir
        self.facility = facility
        upload_dir.mkdir(parents=True, exist_ok=True)
        self._ingest_lock = threading.Lock()

    # -- batches ----------------------------------------------------------------------------

    def create_batch(self, username: str, body: wire.NewBatch, client: str) -> wire.ServerBatch:
        batch_id = secrets.token_hex(12)
        now = time.time()
        self.db.add_batch(
            WebBatch(
                id=batch_id,
                created_by=username,
                created_at=now,
                service_level=body.service_level,
                clinical_history=body.clinical_history,
                referring_clinician=body.referring_clinician,
                label=body.label,
                expected_files=body.expected_files,
                sent_at=None,
            ),
            client,
        )
        return self.batch_view(batch_id)

    def batch_row(self, batch_id: str) -> WebBatch | None:
        return self.db.batch(batch_id)

    def list_batches(self, username: str | None, limit: int = 50) -> list[wire.ServerBatch]:
        return [self.batch_view(i) for i in self.db.batch_ids(username, limit)]

    def batch_view(self, batch_id: str) -> wire.ServerBatch:
        b = self.batch_row(batch_id)
        assert b is not None
        uploads = self.db.batch_uploads(batch_id)
        counts = {"received": 0, "accepted": 0, "duplicate": 0, "quarantined": 0}
        refused: list[wire.RefusedFile] = []
        study_uids: dict[str, int] = {}
        for u in uploads:
            if u.state != "done":
                continue
            counts["received"] += 1
            outcome = "accepted" if u.outcome == "replayed" else u.outcome
            if outcome in counts:
                counts[outcome] += 1
            if outcome == "quarantined":
                # The reason in plain words and what to do (the CLI's words); the technical
                # message stays for IT.
                # (A quarantined file always has its reason, and its message says it.)
                refused.append(
                    wire.RefusedFile(
                        filename=u.filename,
                        reason=u.reason or "",
                        message=u.message or "",
                        **words(u.reason or ""),
                    )
                )
            elif u.study_instance_uid:
                study_uids[u.study_instance_uid] = study_uids.get(u.study_instance_uid, 0) + 1
        return wire.ServerBatch(
            id=b.id,
            service_level=b.service_level,  # type: ignore[arg-type]  # checked by NewBatch
            clinical_history=b.clinical_history,
            referring_clinician=b.referring_clinician,
            label=b.label,
            created_by=b.created_by,
            created_at=b.created_at,
            sent_at=b.sent_at,
            expected_files=b.expected_files,
            files=wire.FileCounts(**counts),
            refused=refused,
            studies=[self._study_view(uid, n) for uid, n in sorted(study_uids.items())],
        )

    def _study_view(self, uid: str, files: int) -> wire.BatchStudy:
        held = self.db.study_holding(uid)
        progress = held.progress
        state = held.state if held.state is not None else "receiving"
        stage: wire.Stage
        if state == "delivered":
            stage = "pacs"
        elif state == "committed":
            stage = "hub"
        elif progress is not None and progress["bytes_sent"] > 0:
            stage = "sending"
        else:
            stage = "agent"
        total = held.bytes
        sent = total if stage in ("hub", "pacs") else (progress or {}).get("bytes_sent", 0)
        return wire.BatchStudy(
            study_instance_uid=uid,
            stage=stage,
            instances=held.instances,
            files_from_this_batch=files,
            bytes_total=total,
            bytes_sent=sent,
            percent=round(100.0 * sent / total, 1) if total else 0.0,
            last_error=held.last_error,
        )

    def send(self, batch_id: str, username: str, client: str) -> wire.ServerBatch:
        """Send the batch's studies now instead of after the quiet period."""
        uids = self.db.sendable_study_uids(batch_id)
        if uids:
            self.store.mark_ready(uids)
        self.db.mark_sent(batch_id, time.time(), username, client, len(uids))
        return self.batch_view(batch_id)

    # -- uploads (the tus server's state) ----------------------------------------------------

    def create_upload(self, batch_id: str, username: str, filename: str, length: int) -> WebUpload:
        upload_id = secrets.token_hex(16)
        self.db.add_upload(
            upload_id, batch_id, username, safe_filename(filename), length, time.time()
        )
        self.part_path(upload_id).touch()
        row = self.upload(upload_id)
        assert row is not None
        return row

    def upload(self, upload_id: str) -> WebUpload | None:
        return self.db.upload(upload_id)

    def part_path(self, upload_id: str) -> Path:
        return self.upload_dir / f"{upload_id}.part"

    def set_offset(self, upload_id: str, offset: int) -> None:
        self.db.set_offset(upload_id, offset, time.time())

    def finish(self, upload_id: str, client: str) -> WebUpload | None:
        """The last byte is here: take the file in (validate, spool or quarantine)."""
        with self._ingest_lock:
            row = self.upload(upload_id)
            if row is None or row.state != "open":
                return row
            batch = self.batch_row(row.batch_id)
            assert batch is not None
            path = self.part_path(upload_id)
            metadata = {
                k: v
                for k, v in {
                    "clinical_history": batch.clinical_history,
                    "referring_clinician": batch.referring_clinician,
                    "facility": self.facility() or "",
                    "submitted_by": row.created_by,
                }.items()
                if v
            }
            source = Source(
                kind="pwa",
                name=row.created_by,
                service_level=batch.service_level,
                metadata=metadata,
                owned=True,
                display_name=row.filename,
                source_path=f"pwa:{upload_id}",
            )
            if path.exists():
                result = self.ingestor.ingest(path, source)
            else:
                result = self._already_taken(upload_id)
            path.unlink(missing_ok=True)  # a duplicate's bytes are already in the spool
            message = result.message or result.reason
            self.db.finish_upload(
                row,
                outcome=result.outcome,
                reason=result.reason or None,
                message=message or None,
                sop_instance_uid=result.sop_instance_uid,
                study_instance_uid=result.study_instance_uid,
                at=time.time(),
                client=client,
            )
            log.info(
                "lan_upload_taken",
                upload_id=upload_id,
                batch=row.batch_id,
                outcome=result.outcome,
                reason=result.reason or None,
            )
            return self.upload(upload_id)

    def _already_taken(self, upload_id: str) -> IngestResult:
        """The file left its upload path before the row said so (a crash in between)."""
        held = self.db.instance_from(f"pwa:{upload_id}")
        if held is not None:
            return IngestResult(
                "accepted", "", held.sop_instance_uid, held.study_instance_uid, held.size
            )
        return IngestResult("quarantined", "lost_in_crash", size=0)

    def terminate(self, upload_id: str) -> bool:
        """Drop an unfinished upload (tus termination); False if it was already taken in."""
        with self._ingest_lock:  # never in the middle of its own ingest
            if not self.db.terminate_upload(upload_id, time.time()):
                return False
            self.part_path(upload_id).unlink(missing_ok=True)
            return True

    def reconcile(self, upload_id: str) -> WebUpload | None:
        """Settle an open upload whose file does not match its row (a crash in between): taken
        in already (its instance is in the catalogue) becomes done; otherwise the offset falls
        back to the bytes really on disk, and the phone sends the rest again."""
        row = self.upload(upload_id)
        if row is None or row.state != "open":
            return row
        path = self.part_path(upload_id)
        taken = self.db.has_instance_from(f"pwa:{upload_id}")
        if taken or not path.exists():
            if taken:
                return self.finish(upload_id, "recovery")
            path.touch()
        size = path.stat().st_size
        if size < row.offset:
            self.set_offset(upload_id, size)
        return self.upload(upload_id)

    def recover(self) -> int:
        """At start: settle every open upload with its file; take in those complete on disk
        whose ingest a crash interrupted. One that still fails waits for the phone's retry."""
        settled = 0
        for upload_id, length in self.db.open_uploads():
            try:
                row = self.reconcile(upload_id)
                assert row is not None
                path = self.part_path(upload_id)
                if row.state == "open" and path.exists() and path.stat().st_size == length:
                    row = self.finish(upload_id, "recovery")
                    assert row is not None
                settled += row.state == "done"
            except Exception:
                log.exception("lan_upload_recovery_failed", upload_id=upload_id)
        return settled

    def expire(self, idle_seconds: float) -> int:
        """Drop uploads nobody has touched for ``idle_seconds`` (a phone that never came back);
        their bytes were never complete, so nothing the agent held is lost."""
        cutoff = time.time() - idle_seconds
        return sum(1 for i in self.db.idle_upload_ids(cutoff) if self.terminate(i))

    def summary(self) -> wire.LanUploads:
        n, left = self.db.open_upload_totals()
        return wire.LanUploads(open_uploads=n, bytes_expected=left)


def batch_json(body: Any) -> wire.NewBatch:
    """Validate a new batch's JSON body (:class:`wire.NewBatch`, strictly: no number for a
    text); raise ValueError with a plain message."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    level = body.get("service_level", "routine")
    if level not in ("stat", "routine"):
        raise ValueError("service_level must be 'stat' or 'routine'")
    out: dict[str, Any] = {"service_level": level}
    for key, limit in (("clinical_history", 4000), ("referring_clinician", 200), ("label", 200)):
        value = body.get(key, "")
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"{key} must be text of at most {limit} characters")
        out[key] = value.strip()
    expected = body.get("expected_files", 0)
    if not isinstance(expected, int) or isinstance(expected, bool) or not 0 <= expected <= 100_000:
        raise ValueError("expected_files must be a whole number from 0 to 100000")
    out["expected_files"] = expected
    return wire.NewBatch.model_validate(out)


def json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
