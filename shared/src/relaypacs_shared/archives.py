"""Safety rules for archives and media: what may be expanded, and where to.

Pure rules over names and sizes; the agent does the reading and writing. A zip is refused whole,
before a byte is written, when any entry breaks a rule (``ArchiveRefused.reason``):

- ``archive_unreadable``      not a readable zip (bad central directory, unsupported method)
- ``archive_encrypted``       an entry is encrypted: the agent has no password to open it
- ``archive_unsafe_path``     an entry name that would land outside the extraction folder
                              (absolute, drive letter, ``..``, NUL) or a symbolic link
- ``archive_too_many_entries``  more entries than the limit
- ``archive_too_large``       declared uncompressed size above the limit (one entry or all)
- ``archive_bomb``            an entry whose uncompressed/compressed ratio is above the limit,
                              or that inflates past what its header declared

Declared sizes can lie, so :class:`InflateBudget` also counts the bytes actually inflated.

DICOMDIR (PS3.10 8.6, PS3.3 F.3): :func:`referenced_file_ids` lists the files its directory
records reference, as relative paths checked by the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from relaypacs_shared.errors import DicomValidationError

DEFAULT_MAX_ARCHIVE_BYTES = 64 * 1024**3
DEFAULT_MAX_ARCHIVE_ENTRIES = 100_000
DEFAULT_MAX_COMPRESSION_RATIO = 250.0
# Below this, a high ratio is harmless (a small all-zero file compresses 1000:1).
_RATIO_FLOOR_BYTES = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
# Files that zip tools and operating systems add; never images.
_JUNK_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}


class ArchiveRefused(DicomValidationError):
    """An archive or medium that is not expanded at all; ``reason`` is one of the codes above."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
    max_entries: int = DEFAULT_MAX_ARCHIVE_ENTRIES
    max_ratio: float = DEFAULT_MAX_COMPRESSION_RATIO
    max_entry_bytes: int = 4 * 1024**3


@dataclass(frozen=True)
class ArchiveEntry:
    """What a zip's central directory says of one entry."""

    name: str
    compressed_size: int
    file_size: int
    is_dir: bool = False
    is_symlink: bool = False
    encrypted: bool = False


@dataclass(frozen=True)
class PlannedMember:
    name: str  # as stored in the archive, to open it
    path: PurePosixPath  # safe relative path
    file_size: int


def safe_relative_path(name: str) -> PurePosixPath:
    """A member name as a relative path that stays inside the extraction folder, or refuse.

    Backslashes count as separators (zips made on Windows); ``.`` parts are dropped.
    """
    if "\x00" in name:
        raise ArchiveRefused("archive_unsafe_path", "an entry name contains a NUL character")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified):
        raise ArchiveRefused("archive_unsafe_path", f"entry {name[:120]!r} has an absolute path")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveRefused(
            "archive_unsafe_path", f"entry {name[:120]!r} points outside the archive (..)"
        )
    if not parts:
        raise ArchiveRefused("archive_unsafe_path", f"entry {name[:120]!r} has no file name")
    return PurePosixPath(*parts)


def is_junk(path: PurePosixPath) -> bool:
    """Files that archivers and desktops add beside the images (resource forks, thumbnails)."""
    return any(p in _JUNK_PARTS or p.startswith("._") for p in path.parts)


def plan_extraction(
    entries: Iterable[ArchiveEntry], limits: ArchiveLimits = ArchiveLimits()
) -> list[PlannedMember]:
    """The files to expand, in archive order, or ``ArchiveRefused`` for the whole archive."""
    planned: list[PlannedMember] = []
    seen: set[PurePosixPath] = set()
    total = 0
    count = 0
    for entry in entries:
        count += 1
        if count > limits.max_entries:
            raise ArchiveRefused(
                "archive_too_many_entries",
                f"the archive has more than {limits.max_entries} entries",
            )
        path = safe_relative_path(entry.name)
        if entry.is_symlink:
            raise ArchiveRefused(
                "archive_unsafe_path", f"entry {entry.name[:120]!r} is a symbolic link"
            )
        if entry.encrypted:
            raise ArchiveRefused("archive_encrypted", f"entry {entry.name[:120]!r} is encrypted")
        if entry.is_dir:
            continue
        if entry.file_size > limits.max_entry_bytes:
            raise ArchiveRefused(
                "archive_too_large",
                f"entry {entry.name[:120]!r} expands to {entry.file_size} bytes, above the "
                f"{limits.max_entry_bytes}-byte limit",
            )
        check_ratio(entry.name, entry.file_size, entry.compressed_size, limits.max_ratio)
        total += entry.file_size
        if total > limits.max_total_bytes:
            raise ArchiveRefused(
                "archive_too_large",
                f"the archive expands to more than {limits.max_total_bytes} bytes",
            )
        if path in seen or is_junk(path):
            continue  # a repeated name would overwrite the first; junk holds no images
        seen.add(path)
        planned.append(PlannedMember(entry.name, path, entry.file_size))
    return planned


def check_ratio(name: str, inflated: int, compressed: int, max_ratio: float) -> None:
    if inflated > _RATIO_FLOOR_BYTES and inflated > max_ratio * max(compressed, 1):
        raise ArchiveRefused(
            "archive_bomb",
            f"entry {name[:120]!r} expands {inflated / max(compressed, 1):.0f} times "
            f"(limit {max_ratio:.0f}): a zip bomb",
        )


class InflateBudget:
    """Counts the bytes actually inflated from one entry against what may be inflated."""

    def __init__(self, member: PlannedMember, compressed_size: int, limits: ArchiveLimits):
        self.member = member
        self.compressed_size = compressed_size
        self.limits = limits
        self.inflated = 0

    def add(self, n: int) -> None:
        self.inflated += n
        if self.inflated > self.member.file_size:
            raise ArchiveRefused(
                "archive_bomb",
                f"entry {self.member.name[:120]!r} inflates past the "
                f"{self.member.file_size} bytes its header declares",
            )
        check_ratio(self.member.name, self.inflated, self.compressed_size, self.limits.max_ratio)


def referenced_file_ids(dicomdir: Any) -> list[PurePosixPath]:
    """Files the records of a DICOMDIR dataset reference (Referenced File ID, PS3.3 F.3.2.2).

    ``dicomdir`` is a pydicom dataset of the Media Storage Directory; each ID is a list of
    path components (CS, at most 8 characters each), relative to the DICOMDIR's folder.
    """
    out: list[PurePosixPath] = []
    for record in dicomdir.get("DirectoryRecordSequence", []) or []:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        out.append(safe_relative_path("/".join(str(p).strip() for p in parts)))
    return out
