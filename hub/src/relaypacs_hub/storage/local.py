"""Local-folder object store: the embedded default.

Writes are atomic and durable: the staged file is fsynced, renamed into place, and the folder is
fsynced, so a crash leaves either the whole object or nothing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from relaypacs_shared.errors import StorageError


class LocalObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._staging = root / ".staging"
        self._staging.mkdir(parents=True, exist_ok=True)

    def staging_dir(self) -> Path:
        return self._staging

    def _path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise StorageError(f"invalid object key {key!r}")
        return self.root / key

    async def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)

        def _put() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(path, dest)
            fd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        try:
            await anyio.to_thread.run_sync(_put)
        except OSError as exc:
            raise StorageError(f"cannot store object {key}: {exc}") from exc

    async def get_bytes(self, key: str) -> bytes:
        try:
            return await anyio.Path(self._path(key)).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read object {key}: {exc}") from exc

    async def iter_bytes(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self._path(key), "rb") as f:
            while chunk := await f.read(chunk_size):
                yield chunk

    async def exists(self, key: str) -> bool:
        return await anyio.Path(self._path(key)).exists()

    async def delete(self, key: str) -> None:
        try:
            await anyio.Path(self._path(key)).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete object {key}: {exc}") from exc
