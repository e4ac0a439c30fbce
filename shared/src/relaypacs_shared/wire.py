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
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from relaypacs_shared.errors import ProtocolError

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
