"""tus 1.0 pieces both sides use: headers, metadata, checksums, and the client's resume logic.

The client logic is a pure state machine (no sockets): it says which byte range to send next and
learns from each answer, so every interruption and retry order can be tested without a network.
Protocol: https://tus.io/protocols/resumable-upload (core, creation, creation-with-upload,
expiration, checksum, termination, concatenation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from relaypacs_shared.errors import OffsetConflict, ProtocolError

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
STATUS_CHECKSUM_MISMATCH = 460


def encode_metadata(meta: dict[str, str]) -> str:
    """``Upload-Metadata``: comma-separated ``key base64(value)`` pairs."""
    parts = []
    for key, value in meta.items():
        if not key or " " in key or "," in key:
            raise ProtocolError(f"invalid Upload-Metadata key {key!r}")
        parts.append(f"{key} {base64.b64encode(value.encode('utf-8')).decode('ascii')}")
    return ",".join(parts)


def decode_metadata(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if not header:
        return out
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        if not key:
            raise ProtocolError("Upload-Metadata has an empty key")
        if key in out:
            raise ProtocolError(f"Upload-Metadata repeats the key {key!r}")
        try:
            out[key] = (
                base64.b64decode(value.strip(), validate=True).decode("utf-8") if value else ""
            )
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ProtocolError(f"Upload-Metadata value of {key!r} is not base64 UTF-8") from exc
    return out


def parse_checksum(header: str) -> tuple[str, bytes]:
    """``Upload-Checksum: <algorithm> <base64 digest>`` -> (algorithm, digest)."""
    algo, _, value = header.strip().partition(" ")
    algo = algo.lower()
    if algo not in CHECKSUM_ALGORITHMS:
        raise ProtocolError(f"unsupported checksum algorithm {algo!r}")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except binascii.Error as exc:
        raise ProtocolError("Upload-Checksum digest is not base64") from exc
    if len(digest) != hashlib.new(algo).digest_size:
        raise ProtocolError(f"Upload-Checksum digest has the wrong length for {algo}")
    return algo, digest


def format_checksum(algo: str, data: bytes) -> str:
    return f"{algo} {base64.b64encode(hashlib.new(algo, data).digest()).decode('ascii')}"


@dataclass(frozen=True)
class Patch:
    """Send bytes ``[offset, offset + length)`` of the upload."""

    offset: int
    length: int


class UploadSession:
    """Client-side resume logic for one upload of known length.

    ``next_patch`` gives the next range; ``acknowledged`` records the server's ``Upload-Offset``
    after a PATCH; ``resync`` takes the offset a HEAD reported after any failure. The server's
    offset is always the truth: bytes it did not acknowledge are sent again, never skipped.
    """

    def __init__(self, length: int, offset: int = 0) -> None:
        if length < 0 or not 0 <= offset <= length:
            raise ValueError("offset must lie within the upload")
        self.length = length
        self.offset = offset
        self.resent_bytes = 0
        self._max_sent = offset

    @property
    def done(self) -> bool:
        return self.offset >= self.length

    def next_patch(self, chunk_size: int) -> Patch | None:
        if self.done:
            return None
        return Patch(self.offset, min(chunk_size, self.length - self.offset))

    def acknowledged(self, patch: Patch, server_offset: int) -> None:
        if server_offset != patch.offset + patch.length:
            raise OffsetConflict(
                f"server acknowledged offset {server_offset}, "
                f"expected {patch.offset + patch.length}"
            )
        self._advance(server_offset)

    def resync(self, server_offset: int) -> None:
        if not 0 <= server_offset <= self.length:
            raise OffsetConflict(f"server offset {server_offset} outside 0..{self.length}")
        if server_offset < self.offset:
            # The server lost acknowledged bytes (e.g. a restore): go back, never skip.
            self.offset = server_offset
        else:
            self._advance(server_offset)

    def sent(self, patch: Patch) -> None:
        """Count bytes put on the wire (for the 'bytes sent again' metric)."""
        end = patch.offset + patch.length
        overlap = max(0, min(end, self._max_sent) - patch.offset)
        self.resent_bytes += overlap
        self._max_sent = max(self._max_sent, end)

    def _advance(self, server_offset: int) -> None:
        self.offset = server_offset
