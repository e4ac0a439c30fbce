"""Where the bytes of unfinished tus uploads live until the upload is complete.

The local implementation keeps one file per upload; ``append`` writes at an offset and truncates
after it, so a PATCH that is replayed after a crash (same offset, same bytes) is harmless.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Protocol

import anyio

from relaypacs_shared.errors import StorageError


class UploadStore(Protocol):
    def staging_dir(self) -> Path:
        """A local folder where PATCH bodies are staged before ``append``."""
        ...

    async def create(self, upload_id: str) -> None: ...

    async def append(self, upload_id: str, offset: int, chunk: Path) -> int:
        """Write ``chunk`` at ``offset``; return the new size of the upload."""
        ...

    async def size(self, upload_id: str) -> int: ...

    async def local_path(self, upload_id: str) -> Path:
        """A local, seekable file with the upload's bytes (for segment processing)."""
        ...

    async def concat(self, upload_id: str, parts: list[str]) -> int: ...

    async def delete(self, upload_id: str) -> None: ...


class LocalUploadStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise StorageError(f"invalid upload id {upload_id!r}")
        return self.root / f"{upload_id}.bin"

    def staging_dir(self) -> Path:
        d = self.root / ".staging"
        d.mkdir(exist_ok=True)
        return d

    async def create(self, upload_id: str) -> None:
        await anyio.to_thread.run_sync(self._path(upload_id).touch)

    async def append(self, upload_id: str, offset: int, chunk: Path) -> int:
        path = self._path(upload_id)

        def _append() -> int:
            out = os.open(path, os.O_RDWR)
            try:
                src = os.open(chunk, os.O_RDONLY)
                try:
                    os.lseek(out, offset, os.SEEK_SET)
                    _copy(src, out)
                finally:
                    os.close(src)
                end = os.lseek(out, 0, os.SEEK_CUR)
                os.ftruncate(out, end)
                os.fsync(out)
                return end
            finally:
                os.close(out)

        try:
            return await anyio.to_thread.run_sync(_append)
        except OSError as exc:
            raise StorageError(f"cannot write upload {upload_id}: {exc}") from exc

    async def size(self, upload_id: str) -> int:
        return (await anyio.Path(self._path(upload_id)).stat()).st_size

    async def local_path(self, upload_id: str) -> Path:
        return self._path(upload_id)

    async def concat(self, upload_id: str, parts: list[str]) -> int:
        dest = self._path(upload_id)

        def _concat() -> int:
            with dest.open("wb") as out:
                for part in parts:
                    with self._path(part).open("rb") as src:
                        while block := src.read(1024 * 1024):
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
                return out.tell()

        return await anyio.to_thread.run_sync(_concat)

    async def delete(self, upload_id: str) -> None:
        await anyio.Path(self._path(upload_id)).unlink(missing_ok=True)


def _copy(src: int, out: int) -> None:
    """Copy the rest of file ``src`` to file ``out`` at their positions: inside the kernel where
    the file system can (no bytes through Python), else in blocks of 1 MiB."""
    try:
        while os.copy_file_range(src, out, 16 * 1024 * 1024):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while block := os.read(src, 1024 * 1024):
        view = memoryview(block)
        while view:
            view = view[os.write(out, view) :]
