"""Wire models and headers of the agent <-> hub API (version 1).

Instance upload::

    PUT /api/v1/studies/{StudyInstanceUID}/instances/{SOPInstanceUID}
    Content-Type: application/dicom
    Content-Digest: sha-256=:<base64 of the SHA-256 of the body>:      (RFC 9530)

    201 InstanceReceipt(status="stored") | 200 InstanceReceipt(status="duplicate")
    400 checksum_mismatch | 409 conflict (same UID, other bytes) | 422 invalid DICOM / UID mismatch

Manifest first (before any bytes cross the WAN)::

    POST /api/v1/studies/{StudyInstanceUID}/manifest    body: instances with UIDs, SHA-256, size
    200 ManifestAnswer(missing=[...]) | 409 conflict (held with other bytes)

Segments: tus 1.0 uploads at /api/v1/uploads (see relaypacs_shared.segments and .tus).

Study commit (the manifest of everything the agent holds for the study)::

    POST /api/v1/studies/{StudyInstanceUID}/commit      body: CommitRequest
    200 StudyStatus | 409 Problem(code="incomplete", missing=[...])
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from relaypacs_shared.errors import (
    ChecksumMismatch,
    Conflict,
    DicomValidationError,
    Forbidden,
    Incomplete,
    NotFound,
    OffsetConflict,
    ProtocolError,
    RelayError,
    StorageError,
    TooLarge,
    UnknownUpload,
    UnsupportedMediaType,
    UnsupportedVersion,
    UploadBusy,
    UploadChecksumMismatch,
    UploadExpired,
    UploadLocked,
)

API_PREFIX = "/api/v1"
ServiceLevel = Literal["stat", "routine"]
_DIGEST_RE = re.compile(r"(?:^|,)\s*sha-256=:([A-Za-z0-9+/=]+):")


def format_content_digest(sha256_hex: str) -> str:
    """``Content-Digest`` value (RFC 9530) for a hex SHA-256."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii") + ":"


def parse_content_digest(value: str) -> str:
    """Hex SHA-256 from a ``Content-Digest`` header, or ``ProtocolError``."""
    m = _DIGEST_RE.search(value or "")
    if not m:
        raise ProtocolError("Content-Digest must carry sha-256=:<base64>: (RFC 9530)")
    try:
        raw = base64.b64decode(m.group(1), validate=True)
    except binascii.Error as exc:
        raise ProtocolError("Content-Digest sha-256 value is not valid base64") from exc
    if len(raw) != 32:
        raise ProtocolError("Content-Digest sha-256 value is not 32 bytes")
    return raw.hex()


class Problem(BaseModel):
    """Error body of every 4xx/5xx answer (shape of RFC 9457, plus a stable ``code``)."""

    code: str
    detail: str
    missing: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class ProblemType:
    """One row of the table: a stable ``code``, the error class and the HTTP status."""

    code: str
    error: type[RelayError]
    status: int
    retry_after: int | None = None  # seconds, for answers worth retrying


# The one table of problem codes <-> error classes. The hub answers every RelayError with the
# row of its nearest class; the agent turns a problem answer back into the row's class. A
# DicomValidationError answers with its own reason as the code (status 422).
PROBLEMS: tuple[ProblemType, ...] = (
    ProblemType("bad_request", ProtocolError, 400),
    ProblemType("checksum_mismatch", ChecksumMismatch, 400),
    ProblemType("upload_checksum_mismatch", UploadChecksumMismatch, 460),
    ProblemType("unknown_upload", UnknownUpload, 404),
    ProblemType("upload_expired", UploadExpired, 410),
    ProblemType("offset_conflict", OffsetConflict, 409),
    ProblemType("unsupported_version", UnsupportedVersion, 412),
    ProblemType("unsupported_media_type", UnsupportedMediaType, 415),
    ProblemType("too_large", TooLarge, 413),
    ProblemType("upload_locked", UploadLocked, 403),
    ProblemType("busy", UploadBusy, 423, retry_after=1),
    ProblemType("not_found", NotFound, 404),
    ProblemType("forbidden", Forbidden, 403),
    ProblemType("conflict", Conflict, 409),
    ProblemType("incomplete", Incomplete, 409),
    ProblemType("invalid_dicom", DicomValidationError, 422),
    ProblemType("storage_unavailable", StorageError, 503, retry_after=10),
)
_BY_CODE = {p.code: p for p in PROBLEMS}
_BY_CLASS = {p.error: p for p in PROBLEMS}
assert len(_BY_CODE) == len(_BY_CLASS) == len(PROBLEMS), "codes and classes are one-to-one"


def problem_type(exc: RelayError) -> ProblemType | None:
    """The row of ``exc``'s nearest class in the table (None: not a problem the wire knows)."""
    for cls in type(exc).__mro__:
        row = _BY_CLASS.get(cls)
        if row is not None:
            return row
    return None


def problem_of(exc: RelayError) -> tuple[int, Problem]:
    """HTTP status and body for an error (500 ``internal_error`` for one outside the table)."""
    row = problem_type(exc)
    if row is None:
        return 500, Problem(code="internal_error", detail="unexpected error; retry the request")
    if isinstance(exc, DicomValidationError):
        return row.status, Problem(code=exc.reason, detail=exc.message)
    missing = list(getattr(exc, "missing", None) or [])[:1000]
    return row.status, Problem(code=row.code, detail=str(exc), missing=missing)


def error_of(status: int, problem: Problem) -> RelayError:
    """The error a problem answer stands for: the same class the other side raised."""
    row = _BY_CODE.get(problem.code)
    if row is None:
        if status == 422:  # a DicomValidationError's reason
            return DicomValidationError(problem.code, problem.detail)
        return ProtocolError(f"{status} {problem.code}: {problem.detail}")
    if row.error in (Conflict, Incomplete):
        return row.error(problem.detail, problem.missing)
    if row.error is DicomValidationError:
        return DicomValidationError(problem.code, problem.detail)
    return row.error(problem.detail)


class InstanceReceipt(BaseModel):
    sop_instance_uid: str
    sha256: str
    size: int
    status: Literal["stored", "duplicate"]


class ManifestEntry(BaseModel):
    sop_instance_uid: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CommitRequest(BaseModel):
    service_level: ServiceLevel = "routine"
    instances: list[ManifestEntry] = Field(min_length=1)
    # Where and when the study reached the agent: for routing rules and time to PACS.
    facility: str | None = Field(default=None, max_length=128)
    received_at: datetime | None = None
    # What the person who sent the study wrote for the radiologist (the PWA's form).
    clinical_history: str | None = Field(default=None, max_length=4000)
    referring_clinician: str | None = Field(default=None, max_length=200)


class ManifestAnswer(BaseModel):
    """The hub's answer to a manifest: which declared instances it still lacks."""

    study_instance_uid: str
    declared: int
    held: int
    missing: list[str]
    missing_bytes: int


class DestinationStatus(BaseModel):
    destination: str
    state: str
    attempts: int
    delivered_instances: int
    confirmed_instances: int
    last_error: str | None = None
    completed_at: datetime | None = None


class StudyStatus(BaseModel):
    study_instance_uid: str
    state: str
    service_level: str
    instance_count: int
    committed_at: datetime | None = None
    destinations: list[DestinationStatus] = Field(default_factory=list)

    @property
    def delivered_everywhere(self) -> bool:
        return bool(self.destinations) and all(d.state == "done" for d in self.destinations)


# Label values the hub exports as Prometheus labels: codes, never free text from DICOM headers.
LABEL_CODE = r"^[a-z0-9_]{1,64}$"


# What the hub's SQL columns hold (INTEGER, BIGINT): a larger number in a request is a 422, not a
# driver overflow (a 500). Request models and route parameters bound themselves with these.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class Heartbeat(BaseModel):
    """An agent's health, posted now and then to ``POST /api/v1/devices/heartbeat`` (agents sit
    behind NAT: the hub cannot scrape them). Counts and times only: no UIDs, no patient data."""

    name: str = Field(
        min_length=1,
        max_length=128,
        description="The agent's name (an enrolled device is named by its enrollment instead).",
    )
    facility: str | None = Field(
        default=None,
        max_length=64,
        description="The facility an unenrolled agent says it serves (an enrolled device's "
        "facility comes from its credential).",
    )
    version: str = Field(min_length=1, max_length=32)
    backlog_studies: int = Field(ge=0, le=INT32_MAX, description="Studies not yet delivered.")
    backlog_bytes: int = Field(
        ge=0, le=INT64_MAX, description="Bytes of the studies not yet delivered."
    )
    oldest_waiting_seconds: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Age of the oldest study not yet delivered.",
    )
    disk_free_bytes: int | None = Field(default=None, ge=0, le=INT64_MAX)
    disk_reserve_bytes: int | None = Field(default=None, ge=0, le=INT64_MAX)
    quarantine: dict[str, int] = Field(
        default_factory=dict,
        max_length=64,
        description="Open quarantine entries by reason code.",
    )
    last_hub_contact_at: datetime | None = Field(
        default=None, description="When the agent last had an answer from the hub."
    )

    @field_validator("quarantine")
    @classmethod
    def _reason_codes(cls, value: dict[str, int]) -> dict[str, int]:
        for reason, count in value.items():
            if not re.match(LABEL_CODE, reason):
                raise ValueError(f"quarantine reason {reason[:64]!r} is not a reason code")
            if not 0 <= count <= INT32_MAX:
                raise ValueError("a quarantine count must be between 0 and 2147483647")
        return value
