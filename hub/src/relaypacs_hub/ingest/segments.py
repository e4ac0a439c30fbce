"""Unpack a completed segment upload into instances, each checked against the study's manifest.

Nothing in a segment is trusted on its own: the segment's checksum must hold, every entry must be
declared in the manifest with the same SHA-256, decompress to exactly that hash and parse as the
DICOM instance it claims to be. An entry that fails is skipped (the manifest will report it as
missing again, so the agent resends it); the rest of the segment still counts.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.audit import audit
from relaypacs_hub.db.models import Instance, ManifestEntry, Upload
from relaypacs_hub.ingest.receive import record_instances
from relaypacs_hub.storage.base import ObjectStore, content_key
from relaypacs_hub.storage.uploads import UploadStore
from relaypacs_shared.dicom import InstanceInfo, validate_file
from relaypacs_shared.errors import DicomValidationError, ProtocolError
from relaypacs_shared.segments import SegmentEntry, extract_entry, read_index

log = structlog.get_logger("relaypacs.hub.segments")
SEGMENT_KIND = "relaypacs-segment"
# SOP Instance UIDs asked about per query (a segment of small instances holds thousands).
_IN_BATCH = 1000


@dataclass
class SegmentOutcome:
    stored: int = 0
    stored_bytes: int = 0
    already_held: int = 0
    rejected: dict[str, str] = field(default_factory=dict)


def _unpack(
    f: BinaryIO, entry: SegmentEntry, tmp: Path, max_instance_bytes: int
) -> tuple[str, InstanceInfo | None]:
    """Decompress one entry to ``tmp`` and, when it hashes as declared, validate it as DICOM:
    (its SHA-256, what it is or None for a hash that differs). One trip to a worker thread for
    both (small instances of a series were mostly trips)."""
    with tmp.open("wb") as out:
        sha = extract_entry(f, entry, out)
    if sha != entry.sha256:
        return sha, None
    return sha, validate_file(tmp, max_bytes=max_instance_bytes, sha256=sha)


async def process_upload(
    upload_id: str,
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    uploads: UploadStore,
    store: ObjectStore,
    max_instance_bytes: int,
) -> SegmentOutcome | None:
    """Process a complete segment upload once; None if it is not a segment or already done."""
    async with sessionmaker() as session, session.begin():
        u = await session.scalar(select(Upload).where(Upload.id == upload_id).with_for_update())
        if u is None or u.state != "complete" or u.study_instance_uid is None:
            return None
        if json.loads(u.metadata_json).get("kind") != SEGMENT_KIND:
            return None
        u.state = "processing"
        study_uid = u.study_instance_uid
        uploader = _uploader(u.owner)
    outcome = SegmentOutcome()
    bound = log.bind(upload_id=upload_id, study_uid=study_uid)
    try:
        path = await uploads.local_path(upload_id)
        length = (await anyio.Path(path).stat()).st_size
        with path.open("rb") as f:
            index = await anyio.to_thread.run_sync(read_index, f, length)
            if index.study_instance_uid != study_uid:
                raise ProtocolError("segment index names another study than its upload")
            # Only this segment's instances, and only the columns compared: a CT's segments
            # each loaded the whole study's rows as ORM objects before.
            sops = [e.sop_instance_uid for e in index.entries]
            declared: dict[str, tuple[str, int]] = {}
            held: dict[str, str] = {}
            async with sessionmaker() as session:
                for i in range(0, len(sops), _IN_BATCH):
                    batch = sops[i : i + _IN_BATCH]
                    for sop, sha, size in await session.execute(
                        select(
                            ManifestEntry.sop_instance_uid,
                            ManifestEntry.sha256,
                            ManifestEntry.size,
                        )
                        .where(ManifestEntry.study_instance_uid == study_uid)
                        .where(ManifestEntry.sop_instance_uid.in_(batch))
                    ):
                        declared[sop] = (sha, size)
                    for sop, sha in await session.execute(
                        select(Instance.sop_instance_uid, Instance.sha256)
                        .where(Instance.study_instance_uid == study_uid)
                        .where(Instance.sop_instance_uid.in_(batch))
                    ):
                        held[sop] = sha
            pending: list[tuple[dict[str, object], str, str, int]] = []
            for entry in index.entries:
                sop = entry.sop_instance_uid
                declared_sha, declared_size = declared.get(sop, (None, None))
                if declared_sha != entry.sha256:
                    outcome.rejected[sop] = "not declared in the study's manifest with this hash"
                    continue
                if entry.size != declared_size or entry.size > max_instance_bytes:
                    # Checked before any work: the size bounds the decompression.
                    outcome.rejected[sop] = (
                        f"entry declares {entry.size} bytes, the manifest {declared_size}"
                        if entry.size != declared_size
                        else f"entry of {entry.size} bytes is over the instance limit"
                    )
                    continue
                if held.get(sop) == entry.sha256:
                    outcome.already_held += 1
                    continue
                tmp = store.staging_dir() / f"{uuid.uuid4().hex}.dcm"
                try:
                    sha, info = await anyio.to_thread.run_sync(
                        _unpack, f, entry, tmp, max_instance_bytes
                    )
                    if info is None:
                        outcome.rejected[sop] = "decompressed bytes do not match the manifest hash"
                        continue
                    if info.sop_instance_uid != sop or info.study_instance_uid != study_uid:
                        outcome.rejected[sop] = "instance UIDs differ from the segment index"
                        continue
                    key = content_key(sha)
                    if not await store.exists(key):
                        await store.put_file(key, tmp)
                    pending.append((info.__dict__ | {"object_key": key}, sop, sha, entry.size))
                except DicomValidationError as exc:
                    outcome.rejected[sop] = f"{exc.reason}: {exc.message}"
                except ProtocolError as exc:
                    outcome.rejected[sop] = str(exc)
                finally:
                    tmp.unlink(missing_ok=True)
            # The bytes are in the object store: record the segment's instances at once.
            recorded = await record_instances(sessionmaker, study_uid, pending)
            for _fields, sop, _sha, size in pending:
                if recorded.get(sop) == "stored":
                    outcome.stored += 1
                    outcome.stored_bytes += size
                elif recorded.get(sop) == "duplicate":
                    outcome.already_held += 1
                else:
                    outcome.rejected[sop] = "the hub holds this instance with other bytes"
        state, error = "processed", None
    except ProtocolError as exc:
        state, error = "rejected", str(exc)
        bound.warning("segment_rejected", error=str(exc))
    except Exception as exc:
        # Leave it complete so a later manifest call processes it again.
        async with sessionmaker() as session, session.begin():
            u = await session.get(Upload, upload_id)
            if u is not None:
                u.state = "complete"
        bound.exception("segment_processing_failed", error_type=type(exc).__name__)
        raise
    async with sessionmaker() as session, session.begin():
        u = await session.get(Upload, upload_id)
        if u is not None:
            u.state = state
            u.error = error or (
                "; ".join(f"{k}: {v}" for k, v in list(outcome.rejected.items())[:20]) or None
            )
        if outcome.stored or outcome.rejected:
            # One audit record for the segment's instances (counts, never patient data), last
            # in the transaction: the cluster-wide audit lock is held from here to the commit.
            await audit(
                session,
                uploader,
                "segment.received",
                study_uid,
                "success" if not outcome.rejected else "minor_failure",
                upload_id=upload_id,
                instances=outcome.stored,
                bytes=outcome.stored_bytes,
                already_held=outcome.already_held,
                rejected=len(outcome.rejected),
            )
    await uploads.delete(upload_id)
    bound.info(
        "segment_processed",
        stored=outcome.stored,
        already_held=outcome.already_held,
        rejected=len(outcome.rejected),
    )
    return outcome


def _uploader(owner: str | None) -> str:
    """The audit actor of a segment: its upload's owner as the audit log names it elsewhere
    (``device:<id>``, a person's username), else ``agent`` (the legacy agent token, the open
    development mode)."""
    if owner is not None and owner.startswith("user:"):
        return owner.removeprefix("user:")
    if owner is not None and owner.startswith("device:"):
        return owner
    return "agent"


async def process_pending(
    study_uid: str,
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    uploads: UploadStore,
    store: ObjectStore,
    max_instance_bytes: int,
) -> None:
    """Process complete segments of a study that a crash left unprocessed."""
    async with sessionmaker() as session:
        ids = list(
            await session.scalars(
                select(Upload.id)
                .where(Upload.study_instance_uid == study_uid)
                .where(Upload.state == "complete")
            )
        )
    for upload_id in ids:
        await process_upload(
            upload_id,
            sessionmaker=sessionmaker,
            uploads=uploads,
            store=store,
            max_instance_bytes=max_instance_bytes,
        )
