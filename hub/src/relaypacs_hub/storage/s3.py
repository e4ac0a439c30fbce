"""S3 object store and upload store, through the MinIO SDK (MinIO in production, any S3 API).

``S3ObjectStore`` keeps DICOM bytes under content addresses, like the local store. Incoming bytes
are still staged in a local folder (hashing and validation need a file); ``put_file`` then uploads
the staged file (multipart above ``part_size``) and removes it. A PUT is atomic in S3: readers see
the whole object or none.

``S3UploadStore`` keeps the bytes of unfinished tus uploads. It does *not* use S3 multipart
uploads: every part but the last must be at least 5 MiB, while a tus PATCH carries whatever the
client managed to send before the link dropped (a few KB is common), and a replayed PATCH must be
able to replace bytes already written. Instead each append is its own object::

    <prefix>uploads/<upload id>/<offset, 20 digits>

The listing is the manifest: the upload's bytes are the chunks in key order, from offset 0 for as
long as they are contiguous. ``append`` at an offset below the end (a PATCH replayed after a crash)
first drops the chunks at or after that offset, last one first, and cuts a chunk that straddles it
with a server-side ranged copy; so a crash at any point leaves a contiguous prefix, never wrong
bytes. Nothing lives in process memory: S3 (and MinIO) list-after-write is strongly consistent,
so any hub replica sees the chunks another one wrote (the tus service serialises PATCHes of one
upload with a row lock). ``local_path`` downloads the chunks into a local cache file named by a
signature of the listing, for segment processing, which needs a seekable file.

minio is synchronous: every call runs in a worker thread. Its errors are translated here, at the
boundary: unreachable endpoint, timeouts, 5xx and throttling become ``TransientStorageError``;
anything else (missing object or bucket, denied access) ``StorageError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from relaypacs_shared.errors import StorageError, TransientStorageError

T = TypeVar("T")

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
_OFFSET_DIGITS = 20
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "OperationAborted",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "XMinioServerNotInitialized",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})


def make_client(
    endpoint: str,
    access_key: str,
    secret_key: str,
    *,
    secure: bool = True,
    region: str | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    retries: int = 3,
) -> Minio:
    """A minio client with timeouts fit for a server (minio's default waits 5 minutes).

    urllib3 retries connection errors and 5xx answers a few times with a short backoff; what still
    fails becomes a ``TransientStorageError`` and the caller's own retry (the agent's) takes over.
    """
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        # More than anyio's default 40 worker threads would never be used at once.
        maxsize=40,
        cert_reqs="CERT_REQUIRED",
        # A private CA: SSL_CERT_FILE, else the system trust store (where Debian admins add it).
        ca_certs=os.environ.get("SSL_CERT_FILE") or None,
        retries=urllib3.Retry(
            total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )
    return Minio(
        endpoint,
        access_key=access_key,
        secret_key=secret_key,
        secure=secure,
        region=region or None,
        http_client=http,
    )


def _translate(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        transient = exc.code in _TRANSIENT_CODES or status >= 500 or status == 429
        cls = TransientStorageError if transient else StorageError
        return cls(f"{what}: S3 answered {exc.code}: {exc.message}")
    if isinstance(exc, ServerError):
        return TransientStorageError(f"{what}: S3 server error {exc.status_code}")
    if isinstance(exc, InvalidResponseError):
        # A proxy or load balancer answering instead of S3 (HTML 502 page and the like).
        status = int(getattr(exc, "_code", 0) or 0)
        cls = TransientStorageError if status >= 500 or status in (408, 429) else StorageError
        return cls(f"{what}: unexpected answer from the S3 endpoint (HTTP {status})")
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        # Refused or reset connections, timeouts, retries exhausted, a body cut short.
        cause = getattr(exc, "reason", None) or exc
        return TransientStorageError(f"{what}: S3 endpoint unreachable ({type(cause).__name__})")
    return StorageError(f"{what}: {exc}")


class _S3Base:
    def __init__(self, client: Minio, bucket: str, *, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _translate(exc, what) from exc


class S3ObjectStore(_S3Base):
    """Content-addressed DICOM bytes in a bucket; same protocol as ``LocalObjectStore``."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        staging: Path,
        prefix: str = "",
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        super().__init__(client, bucket, prefix=prefix)
        self.part_size = part_size
        self._staging = staging
        self._staging.mkdir(parents=True, exist_ok=True)

    def staging_dir(self) -> Path:
        return self._staging

    def object_name(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid object key {key!r}")
        return self.prefix + key

    async def put_file(self, key: str, path: Path) -> None:
        name = self.object_name(key)

        def _put() -> None:
            # One part at a time: minio holds each part in memory while it is sent.
            self.client.fput_object(
                self.bucket, name, str(path), part_size=self.part_size, num_parallel_uploads=1
            )
            path.unlink(missing_ok=True)

        await self._run(f"cannot store object {key}", _put)

    async def get_bytes(self, key: str) -> bytes:
        name = self.object_name(key)

        def _get() -> bytes:
            resp = self.client.get_object(self.bucket, name)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return await self._run(f"cannot read object {key}", _get)

    async def iter_bytes(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        name = self.object_name(key)
        what = f"cannot read object {key}"
        resp = await self._run(what, lambda: self.client.get_object(self.bucket, name))
        try:
            while chunk := await self._run(what, lambda: resp.read(chunk_size)):
                yield chunk
        finally:
            # close() drops a half-read connection instead of handing it back to the pool.
            resp.close()
            resp.release_conn()

    async def exists(self, key: str) -> bool:
        name = self.object_name(key)

        def _exists() -> bool:
            try:
                self.client.stat_object(self.bucket, name)
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    return False
                raise
            return True

        return await self._run(f"cannot look up object {key}", _exists)

    async def delete(self, key: str) -> None:
        name = self.object_name(key)
        await self._run(
            f"cannot delete object {key}", lambda: self.client.remove_object(self.bucket, name)
        )


@dataclass(frozen=True)
class _Chunk:
    name: str
    offset: int
    size: int
    etag: str

    @property
    def end(self) -> int:
        return self.offset + self.size


def _contiguous(chunks: list[_Chunk]) -> list[_Chunk]:
    """The chunks that make up the upload: from offset 0, as long as there is no gap."""
    out: list[_Chunk] = []
    end = 0
    for c in chunks:
        if c.offset != end:
            break
        out.append(c)
        end = c.end
    return out


class S3UploadStore(_S3Base):
    """Unfinished tus uploads as one object per append; same protocol as ``LocalUploadStore``."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        local_dir: Path,
        prefix: str = "",
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        super().__init__(client, bucket, prefix=prefix)
        self.part_size = part_size
        self._staging = local_dir / ".staging"
        self._cache = local_dir / ".cache"
        self._staging.mkdir(parents=True, exist_ok=True)
        self._cache.mkdir(parents=True, exist_ok=True)

    def staging_dir(self) -> Path:
        return self._staging

    def _dir(self, upload_id: str) -> str:
        if not upload_id.isalnum():
            raise StorageError(f"invalid upload id {upload_id!r}")
        return f"{self.prefix}uploads/{upload_id}/"

    def _chunk_name(self, upload_id: str, offset: int) -> str:
        return f"{self._dir(upload_id)}{offset:0{_OFFSET_DIGITS}d}"

    def _list(self, upload_id: str) -> list[_Chunk]:
        base = self._dir(upload_id)
        chunks = []
        for obj in self.client.list_objects(self.bucket, prefix=base, recursive=True):
            tail = (obj.object_name or "")[len(base) :]
            if len(tail) == _OFFSET_DIGITS and tail.isdigit():
                chunks.append(
                    _Chunk(obj.object_name or "", int(tail), obj.size or 0, obj.etag or "")
                )
        return sorted(chunks, key=lambda c: c.offset)

    def _remove(self, names: list[str]) -> None:
        if not names:
            return
        errors = list(self.client.remove_objects(self.bucket, [DeleteObject(n) for n in names]))
        if errors:
            raise StorageError(f"cannot delete {len(errors)} upload chunk(s): {errors[0].message}")

    async def create(self, upload_id: str) -> None:
        # Upload ids are fresh UUIDs, so this usually finds nothing; it makes ``create`` mean
        # "an empty upload" and reaches the bucket once, so a misconfiguration shows up here.
        def _create() -> None:
            self._remove([c.name for c in self._list(upload_id)])

        await self._run(f"cannot create upload {upload_id}", _create)

    async def append(self, upload_id: str, offset: int, chunk: Path) -> int:
        def _append() -> int:
            chunks = self._list(upload_id)
            live = _contiguous(chunks)
            end = live[-1].end if live else 0
            if offset > end:
                raise StorageError(f"append at offset {offset} past the end ({end}) of the upload")
            # Later chunks first, so a crash in between leaves a contiguous (shorter) upload.
            stale = [c for c in chunks if c.offset >= offset]
            for c in reversed(stale):
                self._remove([c.name])
            straddling = next((c for c in live if c.offset < offset < c.end), None)
            if straddling is not None:
                keep = offset - straddling.offset
                self.client.compose_object(
                    self.bucket,
                    straddling.name,
                    [ComposeSource(self.bucket, straddling.name, offset=0, length=keep)],
                )
            size = chunk.stat().st_size
            if size:
                self.client.fput_object(
                    self.bucket,
                    self._chunk_name(upload_id, offset),
                    str(chunk),
                    part_size=self.part_size,
                    num_parallel_uploads=1,
                )
            return offset + size

        return await self._run(f"cannot write upload {upload_id}", _append)

    async def size(self, upload_id: str) -> int:
        live = await self._run(
            f"cannot read upload {upload_id}", lambda: _contiguous(self._list(upload_id))
        )
        return live[-1].end if live else 0

    async def local_path(self, upload_id: str) -> Path:
        def _download() -> Path:
            live = _contiguous(self._list(upload_id))
            signature = hashlib.sha256(
                "\n".join(f"{c.offset}:{c.size}:{c.etag}" for c in live).encode()
            ).hexdigest()[:16]
            path = self._cache / f"{upload_id}-{signature}.bin"
            if path.exists():
                return path
            tmp = self._cache / f"{upload_id}-{uuid.uuid4().hex}.tmp"
            try:
                with tmp.open("wb") as out:
                    for c in live:
                        resp = self.client.get_object(self.bucket, c.name)
                        try:
                            for block in resp.stream(MiB):
                                out.write(block)
                        finally:
                            resp.close()
                            resp.release_conn()
                    if out.tell() != (live[-1].end if live else 0):
                        raise StorageError(f"upload {upload_id} changed while it was downloaded")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            for old in self._cached(upload_id):
                if old != path:
                    old.unlink(missing_ok=True)
            return path

        return await self._run(f"cannot read upload {upload_id}", _download)

    def _cached(self, upload_id: str) -> Iterator[Path]:
        self._dir(upload_id)  # validates the id before it goes into a glob
        return self._cache.glob(f"{upload_id}-*.bin")

    async def concat(self, upload_id: str, parts: list[str]) -> int:
        def _concat() -> int:
            self._remove([c.name for c in self._list(upload_id)])
            pos = 0
            for part in parts:
                live = _contiguous(self._list(part))
                for c in live:
                    # Server-side copy: the bytes never come through the hub.
                    self.client.compose_object(
                        self.bucket,
                        self._chunk_name(upload_id, pos + c.offset),
                        [ComposeSource(self.bucket, c.name)],
                    )
                pos += live[-1].end if live else 0
            return pos

        return await self._run(f"cannot concatenate upload {upload_id}", _concat)

    async def delete(self, upload_id: str) -> None:
        def _delete() -> None:
            self._remove([c.name for c in self._list(upload_id)])
            for path in self._cached(upload_id):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

        await self._run(f"cannot delete upload {upload_id}", _delete)
