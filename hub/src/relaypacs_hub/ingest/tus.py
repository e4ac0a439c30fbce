"""tus 1.0 uploads on the hub: state in the database, bytes in the upload store.

The request rules (headers, offsets, lengths, checksums, concatenation) are the shared core's
(``relaypacs_shared.tus``); this module keeps the state. Each PATCH body is first staged to a
local file while its checksum is computed, so a damaged or interrupted body is discarded without
touching the upload (tus checksum extension). Only then is the upload row locked
(``SELECT ... FOR UPDATE`` on PostgreSQL, so any hub replica may serve any PATCH; a
process-local lock as well for SQLite), the offset checked again and the bytes appended.

Every upload has an owner (the enrolled device, user or token that created it): to anybody else
it does not exist (404 on HEAD, PATCH, DELETE; refused as a part of a concatenation).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.db.models import Upload, utcnow
from relaypacs_hub.storage.uploads import UploadStore
from relaypacs_shared.errors import TooLarge, UnknownUpload, UploadExpired
from relaypacs_shared.tus import (
    BodyCheck,
    Creation,
    PatchRequest,
    UploadState,
    check_concat_part,
    check_patch,
)

log = structlog.get_logger("relaypacs.hub.tus")

# A staged PATCH body nobody has written to for this long belongs to a request that died with
# its process (a crash, a kill): the janitor removes it.
STAGING_STALE_SECONDS = 3600.0

# A PATCH body is written to its staging file in pieces of at least this many bytes.
STAGE_WRITE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class UploadView:
    id: str
    offset: int
    length: int | None
    metadata: dict[str, str]
    expires_at: datetime
    concat: str
    parts: list[str]
    state: str
    owner: str | None

    @property
    def tus(self) -> UploadState:
        return UploadState(self.offset, self.length, self.concat)


def _view(u: Upload) -> UploadView:
    return UploadView(
        id=u.id,
        offset=u.offset,
        length=u.length,
        metadata=json.loads(u.metadata_json),
        expires_at=u.expires_at,
        concat=u.concat,
        parts=json.loads(u.parts_json) if u.parts_json else [],
        state=u.state,
        owner=u.owner,
    )


def _visible(u: Upload | None, owner: str | None) -> Upload:
    """The upload if ``owner`` may see it. Rows from before owners were recorded (None) stay
    reachable until they expire."""
    if u is None or (u.owner is not None and u.owner != owner):
        raise UnknownUpload("unknown upload")
    if u.state == "open" and u.expires_at < utcnow():
        raise UploadExpired("the upload expired")
    return u


class TusService:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        store: UploadStore,
        *,
        max_size: int,
        expiry_seconds: float,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.store = store
        self.max_size = max_size
        self.expiry = timedelta(seconds=expiry_seconds)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def create(self, req: Creation, owner: str | None) -> UploadView:
        upload_id = uuid.uuid4().hex
        now = utcnow()
        length = req.length
        parts = list(req.parts)
        if req.concat == "final":
            length = await self._check_parts(parts, owner)
        await self.store.create(upload_id)
        async with self.sessionmaker() as session, session.begin():
            session.add(
                Upload(
                    id=upload_id,
                    length=length,
                    offset=0,
                    metadata_json=json.dumps(req.metadata),
                    storage_key=upload_id,
                    concat=req.concat,
                    parts_json=json.dumps(parts) if parts else None,
                    study_instance_uid=req.metadata.get("study") or None,
                    owner=owner,
                    state="open",
                    created_at=now,
                    updated_at=now,
                    expires_at=now + self.expiry,
                )
            )
        if req.concat == "final":
            size = await self.store.concat(upload_id, parts)
            async with self.sessionmaker() as session, session.begin():
                u = await session.get(Upload, upload_id)
                assert u is not None
                u.offset = size
                u.state = "complete"
                # The protocol lets the server drop partial uploads once concatenated.
                for pid in parts:
                    part = await session.get(Upload, pid)
                    if part is not None:
                        await session.delete(part)
            for pid in parts:
                await self.store.delete(pid)
        log.info("upload_created", upload_id=upload_id, length=length, concat=req.concat)
        return await self.get(upload_id, owner)

    async def _check_parts(self, parts: list[str], owner: str | None) -> int:
        total = 0
        async with self.sessionmaker() as session:
            for pid in parts:
                u = await session.get(Upload, pid)
                if u is not None and u.owner is not None and u.owner != owner:
                    u = None  # another caller's partial upload is as unknown as a made-up one
                total += check_concat_part(pid, _view(u).tus if u is not None else None)
        if total > self.max_size:
            raise TooLarge("the concatenated upload exceeds Tus-Max-Size")
        return total

    async def get(self, upload_id: str, owner: str | None) -> UploadView:
        async with self.sessionmaker() as session:
            return _view(_visible(await session.get(Upload, upload_id), owner))

    async def stage(
        self, body: AsyncIterator[bytes], check: BodyCheck, upload_id: str = ""
    ) -> tuple[Path, int]:
        """Stage a PATCH body to a local file; return (file, bytes). A body that breaks the
        rules (too long, checksum) leaves nothing behind."""
        tmp = self.store.staging_dir() / f"{uuid.uuid4().hex}.part"
        complete = True
        try:
            async with await anyio.open_file(tmp, "wb") as f:
                # The server hands the body over in pieces of about 64 KB: written one by one,
                # each was a trip to a thread and back (a third of a replica's time under load).
                pending: list[bytes] = []
                held = 0
                try:
                    async for chunk in body:
                        check.feed(chunk)
                        pending.append(chunk)
                        held += len(chunk)
                        if held >= STAGE_WRITE_BYTES:
                            await f.write(b"".join(pending))
                            pending, held = [], 0
                except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                    complete = False
                except Exception as exc:  # starlette's ClientDisconnect
                    if type(exc).__name__ != "ClientDisconnect":
                        raise
                    complete = False
                if pending:
                    await f.write(b"".join(pending))
            log.info("patch_received", upload_id=upload_id, bytes=check.received, complete=complete)
            check.verify(complete)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, check.received

    async def patch(
        self, upload_id: str, owner: str | None, req: PatchRequest, chunk: Path, n: int
    ) -> UploadView:
        async with self._locks[upload_id], self.sessionmaker() as session, session.begin():
            u = _visible(
                await session.scalar(
                    select(Upload).where(Upload.id == upload_id).with_for_update()
                ),
                owner,
            )
            # Again under the lock: another replica may have moved the offset meanwhile.
            length = check_patch(_view(u).tus, PatchRequest(req.offset, None, req.length, n))
            u.length = length
            if n:
                u.offset = await self.store.append(upload_id, req.offset, chunk)
            now = utcnow()
            u.updated_at = now
            u.expires_at = now + self.expiry
            if u.length is not None and u.offset == u.length:
                u.state = "complete"
            return _view(u)

    async def delete(self, upload_id: str, owner: str | None) -> None:
        async with self._locks[upload_id]:
            async with self.sessionmaker() as session, session.begin():
                u = await session.scalar(
                    select(Upload).where(Upload.id == upload_id).with_for_update()
                )
                if u is None or (u.owner is not None and u.owner != owner):
                    raise UnknownUpload("unknown upload")
                await session.delete(u)
            await self.store.delete(upload_id)
        self._locks.pop(upload_id, None)
        log.info("upload_terminated", upload_id=upload_id)

    async def expire(self) -> int:
        """Remove unfinished uploads past their expiry, and staged PATCH bodies a dead request
        left behind; returns how many uploads."""
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            rows = list(
                await session.scalars(
                    select(Upload).where(Upload.state == "open").where(Upload.expires_at < now)
                )
            )
            for u in rows:
                await session.delete(u)
        for u in rows:
            await self.store.delete(u.id)
        if rows:
            log.info("uploads_expired", count=len(rows))
        await anyio.to_thread.run_sync(self.clean_staging)
        return len(rows)

    def clean_staging(self, older_than: float = STAGING_STALE_SECONDS) -> int:
        """Remove staged ``.part`` files nothing has written to for ``older_than`` seconds."""
        cutoff = time.time() - older_than
        removed = 0
        for part in self.store.staging_dir().glob("*.part"):
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # its request finished meanwhile
        if removed:
            log.info("staging_cleaned", files=removed)
        return removed
