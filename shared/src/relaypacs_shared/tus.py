"""tus 1.0 pieces every RelayPACS side uses: headers, metadata, checksums, the server's request
rules and the client's resume logic.

Both tus servers (the hub's ``/api/v1/uploads`` for agents' segments and the agent's LAN
``/api/v1/uploads`` for phones and browsers) call the same sans-IO core below: it reads request
headers (any case-insensitive mapping) and the upload's current state and either returns what
was asked or raises an error of ``relaypacs_shared.errors``; the servers only move bytes and keep
state. The dialect both speak is described in ``docs/tus.md``.

The client logic is a pure state machine (no sockets): it says which byte range to send next and
learns from each answer, so every interruption and retry order can be tested without a network.
Protocol: https://tus.io/protocols/resumable-upload (core, creation, creation-with-upload,
expiration, checksum, termination, concatenation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Literal

from relaypacs_shared.errors import (
    OffsetConflict,
    ProtocolError,
    TooLarge,
    UnknownUpload,
    UnsupportedMediaType,
    UnsupportedVersion,
    UploadChecksumMismatch,
    UploadLocked,
)

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

# Upload-Metadata limits: a header is read before any byte of the body and kept with the upload.
MAX_METADATA_HEADER = 4096
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1024
# Upload-Concat: final may join at most this many partial uploads.
MAX_CONCAT_PARTS = 64
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: "²".isdigit() and "٣".isdigit() are True
_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII without space and comma


def encode_metadata(meta: dict[str, str]) -> str:
    """``Upload-Metadata``: comma-separated ``key base64(value)`` pairs."""
    parts = []
    for key, value in meta.items():
        if not key or " " in key or "," in key:
            raise ProtocolError(f"invalid Upload-Metadata key {key!r}")
        parts.append(f"{key} {base64.b64encode(value.encode('utf-8')).decode('ascii')}")
    return ",".join(parts)


def decode_metadata(header: str | None) -> dict[str, str]:
    """Parse ``Upload-Metadata`` within the limits above, or raise ``ProtocolError``."""
    out: dict[str, str] = {}
    if not header:
        return out
    if len(header) > MAX_METADATA_HEADER:
        raise ProtocolError(f"Upload-Metadata is longer than {MAX_METADATA_HEADER} characters")
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        if not key:
            raise ProtocolError("Upload-Metadata has an empty key")
        if len(key) > MAX_METADATA_KEY or not _KEY.fullmatch(key):
            raise ProtocolError(
                f"Upload-Metadata keys are printable ASCII of at most {MAX_METADATA_KEY} characters"
            )
        if key in out:
            raise ProtocolError(f"Upload-Metadata repeats the key {key!r}")
        if len(out) >= MAX_METADATA_PAIRS:
            raise ProtocolError(f"Upload-Metadata has more than {MAX_METADATA_PAIRS} keys")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ProtocolError(f"Upload-Metadata value of {key!r} is not base64 UTF-8") from exc
        if len(decoded) > MAX_METADATA_VALUE:
            raise ProtocolError(
                f"Upload-Metadata value of {key!r} is longer than {MAX_METADATA_VALUE} characters"
            )
        out[key] = decoded
    return out


def parse_checksum(
    header: str, algorithms: tuple[str, ...] = CHECKSUM_ALGORITHMS
) -> tuple[str, bytes]:
    """``Upload-Checksum: <algorithm> <base64 digest>`` -> (algorithm, digest)."""
    algo, _, value = header.strip().partition(" ")
    algo = algo.lower()
    if algo not in algorithms:
        raise ProtocolError(f"unsupported checksum algorithm {algo[:20]!r}")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except binascii.Error as exc:
        raise ProtocolError("Upload-Checksum digest is not base64") from exc
    if len(digest) != hashlib.new(algo).digest_size:
        raise ProtocolError(f"Upload-Checksum digest has the wrong length for {algo}")
    return algo, digest


def format_checksum(algo: str, data: bytes) -> str:
    return f"{algo} {base64.b64encode(hashlib.new(algo, data).digest()).decode('ascii')}"


# -- the server core ------------------------------------------------------------------------

Headers = Mapping[str, str]  # lower-case names; starlette's and httpx's Headers fit as they are


@dataclass(frozen=True)
class ServerLimits:
    """What one tus server accepts; ``options_headers`` advertises exactly this."""

    max_size: int
    extensions: tuple[str, ...] = TUS_EXTENSIONS
    checksum_algorithms: tuple[str, ...] = CHECKSUM_ALGORITHMS

    def supports(self, extension: str) -> bool:
        return extension in self.extensions


@dataclass(frozen=True)
class Creation:
    """A parsed creation request (``POST``)."""

    length: int | None  # None: deferred (creation-defer-length) or a final concatenation
    metadata: dict[str, str]
    concat: Literal["none", "partial", "final"]
    parts: tuple[str, ...]  # upload ids of a final concatenation, in order
    has_body: bool  # creation-with-upload


@dataclass(frozen=True)
class PatchRequest:
    """A parsed ``PATCH``: where the body goes and how to check it."""

    offset: int
    checksum: tuple[str, bytes] | None
    length: int | None  # Upload-Length declared now for a deferred upload
    content_length: int | None


@dataclass(frozen=True)
class UploadState:
    """What a server knows of one upload, as the core needs it."""

    offset: int
    length: int | None
    concat: str = "none"


def base_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers of every tus answer, errors included."""
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", **(extra or {})}


def options_headers(limits: ServerLimits) -> dict[str, str]:
    h = {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(limits.extensions),
        "Tus-Max-Size": str(limits.max_size),
    }
    if limits.supports("checksum"):
        h["Tus-Checksum-Algorithm"] = ",".join(limits.checksum_algorithms)
    return h


def error_headers(exc: BaseException) -> dict[str, str]:
    """The tus headers an error answer carries besides its problem body."""
    h = base_headers()
    if isinstance(exc, UnsupportedVersion):
        h["Tus-Version"] = TUS_VERSION
    if isinstance(exc, OffsetConflict) and exc.offset is not None:
        h["Upload-Offset"] = str(exc.offset)  # resync without another HEAD
    return h


def require_version(headers: Headers) -> None:
    if headers.get("tus-resumable") != TUS_VERSION:
        raise UnsupportedVersion(f"Tus-Resumable {TUS_VERSION} is required")


def parse_count(headers: Headers, name: str) -> int | None:
    """A byte count header (Upload-Length, Upload-Offset, Content-Length): ASCII digits only."""
    raw = headers.get(name.lower())
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw.strip()):
        raise ProtocolError(f"{name} must be a non-negative integer in ASCII digits")
    return int(raw)


def upload_id_of(url: str) -> str:
    """The last path segment of an upload URL (absolute or not)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def parse_concat(value: str | None) -> tuple[Literal["none", "partial", "final"], tuple[str, ...]]:
    raw = (value or "").strip()
    if not raw:
        return "none", ()
    if raw == "partial":
        return "partial", ()
    if raw.startswith("final;"):
        urls = raw[len("final;") :].split()
        if not urls:
            raise ProtocolError("Upload-Concat: final needs at least one partial upload")
        if len(urls) > MAX_CONCAT_PARTS:
            raise ProtocolError(f"Upload-Concat: final joins at most {MAX_CONCAT_PARTS} uploads")
        return "final", tuple(upload_id_of(u) for u in urls)
    raise ProtocolError("Upload-Concat must be 'partial' or 'final;<upload URLs>'")


def parse_creation(headers: Headers, limits: ServerLimits) -> Creation:
    """Check a creation request against the limits; the upload is not created yet."""
    require_version(headers)
    length = parse_count(headers, "Upload-Length")
    defer = headers.get("upload-defer-length")
    if defer is not None and (defer.strip() != "1" or not limits.supports("creation-defer-length")):
        raise ProtocolError("Upload-Defer-Length is not accepted here; send Upload-Length")
    if length is not None and defer is not None:
        raise ProtocolError("send Upload-Length or Upload-Defer-Length, not both")
    concat, parts = parse_concat(headers.get("upload-concat"))
    if concat != "none" and not limits.supports("concatenation"):
        raise ProtocolError("Upload-Concat is not accepted here")
    if concat == "final":
        if length is not None or defer is not None:
            raise ProtocolError("a final concatenation takes its length from its parts")
    elif length is None and defer is None:
        raise ProtocolError("Upload-Length is required")
    if length is not None and length > limits.max_size:
        raise TooLarge(f"an upload of {length} bytes exceeds Tus-Max-Size {limits.max_size}")
    metadata = decode_metadata(headers.get("upload-metadata"))
    has_body = _is_offset_body(headers)
    if has_body and (concat == "final" or not limits.supports("creation-with-upload")):
        raise ProtocolError("this creation request cannot carry a body")
    return Creation(length, metadata, concat, parts, has_body)


def _is_offset_body(headers: Headers) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == OFFSET_CONTENT_TYPE


def parse_patch(
    headers: Headers, limits: ServerLimits, *, offset: int | None = None
) -> PatchRequest:
    """Check a PATCH's headers. ``offset``: given for creation-with-upload (always 0)."""
    require_version(headers)
    if not _is_offset_body(headers):
        raise UnsupportedMediaType(f"Content-Type must be {OFFSET_CONTENT_TYPE}")
    if offset is None:
        offset = parse_count(headers, "Upload-Offset")
        if offset is None:
            raise ProtocolError("Upload-Offset is required")
    raw = headers.get("upload-checksum")
    checksum = None
    if raw is not None:
        if not limits.supports("checksum"):
            raise ProtocolError("Upload-Checksum is not accepted here")
        checksum = parse_checksum(raw, limits.checksum_algorithms)
    length = parse_count(headers, "Upload-Length")
    if length is not None and length > limits.max_size:
        raise TooLarge(f"an upload of {length} bytes exceeds Tus-Max-Size {limits.max_size}")
    return PatchRequest(offset, checksum, length, parse_count(headers, "Content-Length"))


def check_patch(upload: UploadState, req: PatchRequest) -> int | None:
    """Apply the offset and length rules before any byte is read; return the upload's length
    after this PATCH (a deferred length may be declared now)."""
    if upload.concat == "final":
        raise UploadLocked("a final concatenation cannot be patched")
    if req.offset != upload.offset:
        raise OffsetConflict(
            f"Upload-Offset {req.offset} is not the upload's offset {upload.offset}",
            offset=upload.offset,
        )
    length = upload.length
    if req.length is not None:
        if length is not None and req.length != length:
            raise ProtocolError("Upload-Length cannot change once declared")
        if req.length < upload.offset:
            raise ProtocolError("Upload-Length is below the bytes already received")
        length = req.length
    if (
        length is not None
        and req.content_length is not None
        and (req.offset + req.content_length > length)
    ):
        raise TooLarge("the PATCH body runs past Upload-Length")
    return length


def body_room(upload: UploadState, length: int | None, max_size: int) -> int:
    """How many body bytes this PATCH may still carry."""
    return max((length if length is not None else max_size) - upload.offset, 0)


class BodyCheck:
    """Counts (and hashes, with a checksum) a PATCH body as it streams in."""

    def __init__(self, room: int, checksum: tuple[str, bytes] | None) -> None:
        self.room = room
        self.checksum = checksum
        self.received = 0
        self._hash = hashlib.new(checksum[0]) if checksum else None

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.room:
            raise TooLarge("the PATCH body runs past Upload-Length")
        if self._hash is not None:
            self._hash.update(chunk)

    def verify(self, complete: bool) -> None:
        """After the body: with a checksum, only a whole, matching body may be kept."""
        if self.checksum is None:
            return
        if not complete:
            raise ProtocolError("the connection was lost mid-PATCH: the partial body is discarded")
        assert self._hash is not None
        if self._hash.digest() != self.checksum[1]:
            raise UploadChecksumMismatch("Upload-Checksum does not match the PATCH body")


def check_concat_part(part_id: str, part: UploadState | None) -> int:
    """A part of a final concatenation must be a complete partial upload; returns its length."""
    if part is None or part.concat != "partial":
        raise UnknownUpload(f"{part_id} is not a partial upload of this server")
    if part.length is None or part.offset != part.length:
        raise ProtocolError(f"partial upload {part_id} is not complete yet")
    return part.length


def upload_headers(
    upload: UploadState,
    *,
    expires_at: datetime | None = None,
    metadata: Mapping[str, str] | None = None,
    part_urls: tuple[str, ...] = (),
) -> dict[str, str]:
    """Headers of a HEAD answer (and of a creation answer)."""
    h = base_headers({"Upload-Offset": str(upload.offset)})
    if upload.length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(upload.length)
    if expires_at is not None:
        h["Upload-Expires"] = http_date(expires_at)
    if metadata:
        h["Upload-Metadata"] = encode_metadata(dict(metadata))
    if upload.concat == "partial":
        h["Upload-Concat"] = "partial"
    elif upload.concat == "final":
        h["Upload-Concat"] = "final;" + " ".join(part_urls)
    return h


def http_date(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment.astimezone(UTC), usegmt=True)


# -- the client's resume logic ---------------------------------------------------------------


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
