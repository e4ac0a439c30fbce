"""Receive one instance from an agent: stage, hash, validate, store, record.

The hub trusts nothing the agent says: the body must hash to the declared SHA-256, parse as DICOM,
and carry the UIDs of the URL. Only then does it enter the object store and the database.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub import metrics
from relaypacs_hub.audit import audit
from relaypacs_hub.db.models import Instance, Study, StudyFacility
from relaypacs_hub.storage.base import ObjectStore, content_key
from relaypacs_shared.dicom import validate_file
from relaypacs_shared.errors import ChecksumMismatch, DicomValidationError, ProtocolError
from relaypacs_shared.wire import InstanceReceipt

log = structlog.get_logger("relaypacs.hub.ingest")


class InstanceConflict(ProtocolError):
    """The hub holds this SOP Instance UID with other bytes."""


class BodyTooLarge(ProtocolError):
    pass


async def _stage(
    body: AsyncIterator[bytes], staging: Path, max_bytes: int
) -> tuple[Path, str, int]:
    tmp = staging / f"{uuid.uuid4().hex}.part"
    h = hashlib.sha256()
    size = 0
    try:
        async with await anyio.open_file(tmp, "wb") as f:
            async for chunk in body:
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge(f"instance larger than the {max_bytes}-byte limit")
                h.update(chunk)
                await f.write(chunk)
            await f.flush()
            await anyio.to_thread.run_sync(os.fsync, f.wrapped.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, h.hexdigest(), size


async def receive_instance(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    study_uid: str,
    sop_uid: str,
    declared_sha256: str,
    body: AsyncIterator[bytes],
    max_bytes: int,
) -> InstanceReceipt:
    async with sessionmaker() as session:
        existing = await session.get(Instance, sop_uid)
        if existing is not None and existing.sha256 == declared_sha256:
            # Already held: drain nothing more than needed and answer as a duplicate.
            return InstanceReceipt(
                sop_instance_uid=sop_uid,
                sha256=existing.sha256,
                size=existing.size,
                status="duplicate",
            )
    tmp, sha, size = await _stage(body, store.staging_dir(), max_bytes)
    try:
        if sha != declared_sha256:
            raise ChecksumMismatch(
                f"body hashes to {sha}, the agent declared {declared_sha256}: bytes were damaged"
            )
        info = await anyio.to_thread.run_sync(
            lambda: validate_file(tmp, max_bytes=max_bytes, sha256=sha)
        )
        if info.sop_instance_uid != sop_uid or info.study_instance_uid != study_uid:
            raise DicomValidationError(
                "uid_mismatch", "the instance's Study/SOP Instance UIDs differ from the URL's"
            )
        key = content_key(sha)
        if not await store.exists(key):
            await store.put_file(key, tmp)
        return await record_instance(
            sessionmaker, info.__dict__ | {"object_key": key}, sop_uid, sha, size
        )
    finally:
        tmp.unlink(missing_ok=True)


async def record_instance(
    sessionmaker: async_sessionmaker[AsyncSession],
    fields: dict[str, object],
    sop_uid: str,
    sha: str,
    size: int,
) -> InstanceReceipt:
    for _ in range(3):
        async with sessionmaker() as session:
            existing = await session.get(Instance, sop_uid)
            if existing is not None:
                if existing.sha256 != sha:
                    raise InstanceConflict(
                        f"the hub already holds SOP Instance {sop_uid} with other bytes"
                    )
                return InstanceReceipt(
                    sop_instance_uid=sop_uid, sha256=sha, size=size, status="duplicate"
                )
            study_uid = str(fields["study_instance_uid"])
            study = await session.get(Study, study_uid)
            try:
                if study is None:
                    study = Study(study_instance_uid=study_uid)
                    session.add(study)
                    await session.flush()  # the instance row references it
            except IntegrityError:
                await session.rollback()
                continue
            note_study_facts(study, fields)
            session.add(
                Instance(
                    sop_instance_uid=sop_uid,
                    study_instance_uid=study_uid,
                    series_instance_uid=str(fields["series_instance_uid"]),
                    sop_class_uid=str(fields["sop_class_uid"]),
                    transfer_syntax_uid=str(fields["transfer_syntax_uid"]),
                    sha256=sha,
                    size=size,
                    object_key=str(fields["object_key"]),
                )
            )
            try:
                await audit(
                    session, "agent", "instance.received", sop_uid, study_uid=study_uid, size=size
                )
                await session.commit()
            except IntegrityError as exc:
                log.debug("record_retry", error=str(exc.orig)[:200])
                # Another request (or replica) recorded the study or instance first: look again.
                await session.rollback()
                continue
            log.info("instance_stored", study_uid=study_uid, sop_uid=sop_uid, size=size)
            async with sessionmaker() as session:
                origin = await session.get(StudyFacility, study_uid)
            metrics.instance_stored(origin.facility if origin else None, size)
            return InstanceReceipt(sop_instance_uid=sop_uid, sha256=sha, size=size, status="stored")
    raise ProtocolError("could not record the instance after concurrent updates; retry")


def note_study_facts(study: Study, fields: dict[str, object]) -> None:
    """Keep the study's modalities, date, description and accession from an instance's header:
    the first non-empty value of each, and every modality seen (in first-seen order)."""
    modality = str(fields.get("modality") or "")
    seen = study.modalities.split("\\") if study.modalities else []
    if modality and modality not in seen:
        joined = "\\".join([*seen, modality])
        if len(joined) <= 64:
            study.modalities = joined
    for name in ("study_date", "study_description", "accession_number"):
        value = str(fields.get(name) or "")
        if value and not getattr(study, name):
            setattr(study, name, value)


async def held_instances(session: AsyncSession, study_uid: str) -> dict[str, str]:
    rows = await session.execute(
        select(Instance.sop_instance_uid, Instance.sha256).where(
            Instance.study_instance_uid == study_uid
        )
    )
    return {r[0]: r[1] for r in rows}
