"""tus 1.0 uploads on the hub: state in the database, bytes in the upload store.

Each PATCH body is first staged to a local file while its checksum is computed, so a damaged or
interrupted body is discarded without touching the upload (tus checksum extension). Only then is
the upload row locked (``SELECT ... FOR UPDATE`` on PostgreSQL, so any hub replica may serve any
PATCH; a process-local lock as well for SQLite), the offset checked and the bytes appended.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
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
from relaypacs_shared.errors import ChecksumMismatch, OffsetConflict, ProtocolError

log = structlog.get_logger("relaypacs.hub.tus")


class UploadGone(ProtocolError):
    """Unknown, terminated or expired upload (404 / 410)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


class UploadTooLarge(ProtocolError):
    pass


class UploadLocked(ProtocolError):
    pass


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
    )


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

    async def create(
        self,
        *,
        length: int | None,
        metadata: dict[str, str],
        concat: str = "none",
        parts: list[str] | None = None,
    ) -> UploadView:
        if length is not None and length > self.max_size:
            raise UploadTooLarge(f"upload of {length} bytes exceeds Tus-Max-Size {self.max_size}")
        upload_id = uuid.uuid4().hex
        now = utcnow()
        if concat == "final":
            length = await self._check_parts(parts or [])
        await self.store.create(upload_id)
        async with self.sessionmaker() as session, session.begin():
            session.add(
                Upload(
                    id=upload_id,
                    length=length,
                    offset=0,
                    metadata_json=json.dumps(metadata),
                    storage_key=upload_id,
                    concat=concat,
                    parts_json=json.dumps(parts) if parts else None,
                    study_instance_uid=metadata.get("study") or None,
                    state="open",
                    created_at=now,
                    updated_at=now,
                    expires_at=now + self.expiry,
                )
            )
        if concat == "final":
            size = await self.store.concat(upload_id, parts or [])
            async with self.sessionmaker() as session, session.begin():
                u = await session.get(Upload, upload_id)
                assert u is not None
                u.offset = size
                u.state = "complete"
                # The protocol lets the server drop partial uploads once concatenated.
                for pid in parts or []:
                    part = await session.get(Upload, pid)
                    if part is not None:
                        await session.delete(part)
            for pid in parts or []:
                await self.store.delete(pid)
        log.info("upload_created", upload_id=upload_id, length=length, concat=concat)
        return await self.get(upload_id)

    async def _check_parts(self, parts: list[str]) -> int:
        if not parts:
            raise ProtocolError("Upload-Concat: final needs at least one partial upload")
        total = 0
        async with self.sessionmaker() as session:
            for pid in parts:
                u = await session.get(Upload, pid)
                if u is None or u.concat != "partial":
                    raise ProtocolError(f"{pid} is not a partial upload of this server")
                if u.length is None or u.offset != u.length:
                    raise ProtocolError(f"partial upload {pid} is not complete yet")
                total += u.length
        if total > self.max_size:
            raise UploadTooLarge("concatenated upload exceeds Tus-Max-Size")
        return total

    async def get(self, upload_id: str) -> UploadView:
        async with self.sessionmaker() as session:
            u = await session.get(Upload, upload_id)
            if u is None:
                raise UploadGone("unknown upload")
            if u.state == "open" and u.expires_at < utcnow():
                raise UploadGone("the upload expired", status=410)
            return _view(u)

    async def stage(
        self,
        body: AsyncIterator[bytes],
        checksum: tuple[str, bytes] | None,
        limit: int,
        upload_id: str = "",
    ) -> tuple[Path, int, bool]:
        """Stage a PATCH body; return (file, bytes, complete). Raises ChecksumMismatch."""
        tmp = self.store.staging_dir() / f"{uuid.uuid4().hex}.part"
        h = hashlib.new(checksum[0]) if checksum else None
        n = 0
        complete = True
        try:
            async with await anyio.open_file(tmp, "wb") as f:
                try:
                    async for chunk in body:
                        n += len(chunk)
                        if n > limit:
                            raise UploadTooLarge("PATCH body runs past Upload-Length")
                        if h:
                            h.update(chunk)
                        await f.write(chunk)
                except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                    complete = False
                except Exception as exc:  # starlette's ClientDisconnect
                    if type(exc).__name__ != "ClientDisconnect":
                        raise
                    complete = False
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        log.info("patch_received", upload_id=upload_id, bytes=n, complete=complete)
        if checksum and (not complete or h is None or h.digest() != checksum[1]):
            tmp.unlink(missing_ok=True)
            if not complete:
                raise ProtocolError("connection lost mid-PATCH: the partial body is discarded")
            raise ChecksumMismatch("Upload-Checksum does not match the PATCH body")
        return tmp, n, complete

    async def patch(
        self, upload_id: str, offset: int, chunk: Path, n: int, length: int | None = None
    ) -> UploadView:
        async with self._locks[upload_id], self.sessionmaker() as session, session.begin():
            u = await session.scalar(select(Upload).where(Upload.id == upload_id).with_for_update())
            if u is None:
                raise UploadGone("unknown upload")
            if u.state == "open" and u.expires_at < utcnow():
                raise UploadGone("the upload expired", status=410)
            if u.concat == "final":
                raise UploadLocked("a final concatenation cannot be patched")
            if u.length is None and length is not None:
                if length > self.max_size:
                    raise UploadTooLarge("Upload-Length exceeds Tus-Max-Size")
                u.length = length
            if offset != u.offset:
                raise OffsetConflict(f"Upload-Offset {offset} != current offset {u.offset}")
            if u.length is not None and offset + n > u.length:
                raise UploadTooLarge("PATCH body runs past Upload-Length")
            if n:
                u.offset = await self.store.append(upload_id, offset, chunk)
            now = utcnow()
            u.updated_at = now
            u.expires_at = now + self.expiry
            if u.length is not None and u.offset == u.length:
                u.state = "complete"
            return _view(u)

    async def delete(self, upload_id: str) -> None:
        async with self._locks[upload_id]:
            async with self.sessionmaker() as session, session.begin():
                u = await session.scalar(
                    select(Upload).where(Upload.id == upload_id).with_for_update()
                )
                if u is None:
                    raise UploadGone("unknown upload")
                await session.delete(u)
            await self.store.delete(upload_id)
        self._locks.pop(upload_id, None)
        log.info("upload_terminated", upload_id=upload_id)

    async def expire(self) -> int:
        """Remove unfinished uploads past their expiry; returns how many."""
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
        return len(rows)
