"""The segment: how a batch of instances crosses the WAN (format ``relaypacs-segment``, version 1).

A segment packs several instances of one study into one file that is uploaded with tus. Layout::

    offset 0       magic      b"RPSEG\\x00\\x01\\n"   (8 bytes; the 7th byte is the version)
    8              payloads   each instance's bytes, compressed (zstd or DEFLATE) or as they are
                              back to back
    ...            index      UTF-8 JSON: SegmentIndex (entries with offset, stored length, hashes)
    end - 36       u32 LE     length of the index in bytes
    end - 32       SHA-256    of every byte before it (the segment's own integrity check)

The index is at the end so the agent writes a segment in one streaming pass with bounded memory.
Each entry carries the SHA-256 of the *original* instance bytes, so the hub checks every instance
against the manifest after decompression, independently of the segment checksum.

Compression is per entry: uncompressed transfer syntaxes are zstd-compressed (typically 40-60 %
of their size for CT/MR), encapsulated (JPEG, JPEG 2000, RLE, deflate...) ones are sent as they are.
Agents write zstd. The upload app in a browser (sending straight to the hub) writes ``deflate``:
raw DEFLATE (RFC 1951, no zlib header), which browsers compress natively or with a small library;
the hub reads both, with the same guard against decompression bombs.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import zstandard
from pydantic import BaseModel, Field

from relaypacs_shared.errors import ChecksumMismatch, ProtocolError

MAGIC = b"RPSEG\x00\x01\n"
VERSION = 1
TRAILER = struct.Struct("<I32s")
UNCOMPRESSED_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    }
)
Encoding = Literal["zstd", "deflate", "identity"]
_CHUNK = 1024 * 1024


def should_compress(transfer_syntax_uid: str) -> bool:
    """zstd pays off for native pixel data; encapsulated pixel data is already compressed."""
    return transfer_syntax_uid in UNCOMPRESSED_TRANSFER_SYNTAXES


class SegmentEntry(BaseModel):
    sop_instance_uid: str
    series_instance_uid: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    encoding: Encoding
    offset: int = Field(ge=len(MAGIC))
    length: int = Field(ge=0)


class SegmentIndex(BaseModel):
    format: Literal["relaypacs-segment"] = "relaypacs-segment"
    version: Literal[1] = 1
    segment_id: str
    study_instance_uid: str
    entries: list[SegmentEntry]


@dataclass(frozen=True)
class SegmentItem:
    """One instance to pack, as the agent holds it in its spool."""

    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    sha256: str
    size: int
    compress: bool


@dataclass(frozen=True)
class BuiltSegment:
    path: Path
    length: int
    sha256: str
    index: SegmentIndex

    @property
    def raw_bytes(self) -> int:
        return sum(e.size for e in self.index.entries)


class _HashingWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.written = 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.hash.update(data)
        self.written += len(data)
        return len(data)


def write_segment(
    out: BinaryIO,
    *,
    segment_id: str,
    study_instance_uid: str,
    items: Sequence[SegmentItem],
    level: int = 3,
) -> tuple[int, str, SegmentIndex]:
    """Stream a segment to ``out``; return (length, its checksum (the trailer's SHA-256), index)."""
    w = _HashingWriter(out)
    w.write(MAGIC)
    entries: list[SegmentEntry] = []
    cctx = zstandard.ZstdCompressor(level=level)
    for item in items:
        start = w.written
        src_hash = hashlib.sha256()
        with item.path.open("rb") as src:
            if item.compress:
                # _HashingWriter has the one method stream_writer uses: write().
                with cctx.stream_writer(w, closefd=False, write_return_read=True) as zw:  # type: ignore[arg-type]
                    while block := src.read(_CHUNK):
                        src_hash.update(block)
                        zw.write(block)
            else:
                while block := src.read(_CHUNK):
                    src_hash.update(block)
                    w.write(block)
        if src_hash.hexdigest() != item.sha256:
            raise ChecksumMismatch(
                f"spool file of {item.sop_instance_uid} no longer hashes to its recorded SHA-256"
            )
        entries.append(
            SegmentEntry(
                sop_instance_uid=item.sop_instance_uid,
                series_instance_uid=item.series_instance_uid,
                sha256=item.sha256,
                size=item.size,
                encoding="zstd" if item.compress else "identity",
                offset=start,
                length=w.written - start,
            )
        )
    index = SegmentIndex(
        segment_id=segment_id, study_instance_uid=study_instance_uid, entries=entries
    )
    raw = index.model_dump_json().encode("utf-8")
    w.write(raw)
    w.write(struct.pack("<I", len(raw)))
    digest = w.hash.digest()
    out.write(digest)
    return w.written + len(digest), digest.hex(), index


def build_segment(
    path: Path, *, segment_id: str, study_instance_uid: str, items: Sequence[SegmentItem]
) -> BuiltSegment:
    """Write a segment file durably (temp, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        length, sha, index = write_segment(
            f, segment_id=segment_id, study_instance_uid=study_instance_uid, items=items
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return BuiltSegment(path=path, length=length, sha256=sha, index=index)


def read_index(f: BinaryIO, length: int) -> SegmentIndex:
    """Verify the segment's own checksum and return its index. ``f`` must be seekable."""
    if length < len(MAGIC) + TRAILER.size:
        raise ProtocolError("segment too short")
    f.seek(0)
    if f.read(len(MAGIC)) != MAGIC:
        raise ProtocolError("not a RelayPACS segment (bad magic or unsupported version)")
    h = hashlib.sha256(MAGIC)
    remaining = length - len(MAGIC) - 32
    while remaining > 0:
        block = f.read(min(_CHUNK, remaining))
        if not block:
            raise ProtocolError("segment shorter than declared")
        h.update(block)
        remaining -= len(block)
    expected = f.read(32)
    if h.digest() != expected:
        raise ChecksumMismatch("segment checksum mismatch: the segment was damaged")
    f.seek(length - TRAILER.size)
    index_len, _ = TRAILER.unpack(f.read(TRAILER.size))
    index_start = length - TRAILER.size - index_len
    if index_start < len(MAGIC):
        raise ProtocolError("segment index length is out of range")
    f.seek(index_start)
    try:
        index = SegmentIndex.model_validate(json.loads(f.read(index_len)))
    except ValueError as exc:
        raise ProtocolError(f"segment index unreadable: {exc}") from exc
    for e in index.entries:
        if e.offset + e.length > index_start:
            raise ProtocolError("a segment entry points past the payload area")
    return index


class _EntryReader:
    """The stored bytes of one entry, as a file the decompressor reads from."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self.f = f
        self.remaining = length

    def read(self, n: int = -1) -> bytes:
        want = self.remaining if n is None or n < 0 else min(n, self.remaining)
        if want <= 0:
            return b""
        block = self.f.read(want)
        if not block:
            raise ProtocolError("segment entry truncated")
        self.remaining -= len(block)
        return block


def _inflate(src: _EntryReader, entry: SegmentEntry, h: hashlib._Hash, out: BinaryIO) -> int:
    """Raw DEFLATE, in output blocks of at most 1 MiB (``max_length``), stopped past the size."""
    d = zlib.decompressobj(wbits=-15)
    written = 0
    try:
        while True:
            block = src.read(_CHUNK)
            pending = block
            while True:
                data = d.decompress(pending, _CHUNK)
                pending = d.unconsumed_tail
                if data:
                    written += len(data)
                    if written > entry.size:
                        raise ProtocolError("entry decompresses beyond its declared size")
                    h.update(data)
                    out.write(data)
                if not pending or d.eof:
                    break
            if d.eof or not block:
                break
        if not d.eof:
            raise ProtocolError("entry is not valid deflate data: truncated stream")
    except zlib.error as exc:
        raise ProtocolError(f"entry is not valid deflate data: {exc}") from exc
    return written


def extract_entry(f: BinaryIO, entry: SegmentEntry, out: BinaryIO) -> str:
    """Write one entry's original bytes to ``out``; return their SHA-256 (hex).

    Decompression runs in blocks of at most 1 MiB of output, stopped as soon as the entry's
    declared size is passed: a few KB crafted to expand to gigabytes cost at most one block.
    """
    f.seek(entry.offset)
    h = hashlib.sha256()
    src = _EntryReader(f, entry.length)
    written = 0
    if entry.encoding == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_size=_CHUNK)  # type: ignore[arg-type]
        try:
            while data := reader.read(_CHUNK):
                written += len(data)
                if written > entry.size:
                    raise ProtocolError("entry decompresses beyond its declared size")
                h.update(data)
                out.write(data)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"entry is not valid zstd data: {exc}") from exc
    elif entry.encoding == "deflate":
        written = _inflate(src, entry, h, out)
    else:
        while block := src.read(_CHUNK):
            written += len(block)
            h.update(block)
            out.write(block)
    if written != entry.size:
        raise ProtocolError(f"entry is {written} bytes, declared {entry.size}")
    return h.hexdigest()
