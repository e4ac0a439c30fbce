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
    *,
    audited: bool = True,
) -> InstanceReceipt:
    """Record a stored instance (and its study). ``audited``: append an audit record for this
    instance; a segment's instances are audited together, one record per segment (the audit
    chain is one cluster-wide serialised append: one per instance capped ingest at the rate of
    that lock)."""
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
                if audited:
                    await audit(
                        session,
                        "agent",
                        "instance.received",
                        sop_uid,
                        study_uid=study_uid,
                        size=size,
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


async def record_instances(
    sessionmaker: async_sessionmaker[AsyncSession],
    study_uid: str,
    items: list[tuple[dict[str, object], str, str, int]],
) -> dict[str, str]:
    """Record a segment's stored instances (fields, SOP UID, SHA-256, size) in one transaction;
    answer each one's outcome: ``stored``, ``duplicate`` (held with these bytes) or ``conflict``
    (held with other bytes).

    One transaction per segment instead of one per instance: the per-instance round trips and
    commits were the hub's largest ingest cost after hashing. When another replica records some
    of the same instances at the same moment, they are recorded one by one instead."""
    if not items:
        return {}
    out: dict[str, str] = {}
    try:
        async with sessionmaker() as session, session.begin():
            sops = [sop for _, sop, _, _ in items]
            existing = {
                r[0]: r[1]
                for r in await session.execute(
                    select(Instance.sop_instance_uid, Instance.sha256).where(
                        Instance.sop_instance_uid.in_(sops)
                    )
                )
            }
            study = await session.get(Study, study_uid)
            if study is None:
                study = Study(study_instance_uid=study_uid)
                session.add(study)
                await session.flush()  # the instance rows reference it
            for fields, sop, sha, size in items:
                if sop in existing or sop in out:
                    held = existing.get(sop, sha)
                    out[sop] = "duplicate" if held == sha else "conflict"
                    continue
                note_study_facts(study, fields)
                session.add(
                    Instance(
                        sop_instance_uid=sop,
                        study_instance_uid=study_uid,
                        series_instance_uid=str(fields["series_instance_uid"]),
                        sop_class_uid=str(fields["sop_class_uid"]),
                        transfer_syntax_uid=str(fields["transfer_syntax_uid"]),
                        sha256=sha,
                        size=size,
                        object_key=str(fields["object_key"]),
                    )
                )
                out[sop] = "stored"
            origin = await session.get(StudyFacility, study_uid)
    except IntegrityError:
        out = {}
        for fields, sop, sha, size in items:
            try:
                receipt = await record_instance(sessionmaker, fields, sop, sha, size, audited=False)
                out[sop] = receipt.status
            except InstanceConflict:
                out[sop] = "conflict"
        return out
    facility = origin.facility if origin else None
    for _fields, sop, _sha, size in items:
        if out.get(sop) == "stored":
            metrics.instance_stored(facility, size)
    return out


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
