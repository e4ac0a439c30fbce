"""The object store the hub keeps DICOM bytes in.

Keys are content addresses (``sha256/ab/abcdef...``): the same bytes are stored once, whatever
study or upload brought them. Implementations: local folder (embedded default); S3 follows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol


def content_key(sha256: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}"


class ObjectStore(Protocol):
    def staging_dir(self) -> Path:
        """A local folder for incoming bytes before ``put_file`` takes them."""
        ...

    async def put_file(self, key: str, path: Path) -> None:
        """Take ownership of the local file ``path`` under ``key`` (atomically, durably)."""
        ...

    async def get_bytes(self, key: str) -> bytes: ...

    def iter_bytes(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]: ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...
