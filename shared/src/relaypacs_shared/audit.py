"""Append-only, hash-chained audit records: serialisation, chaining and verification (pure).

Each record's hash is ``SHA-256(prev_hash || canonical JSON of the record)``; the first record
chains from :data:`GENESIS`. A record carries ``seq`` (1, 2, 3, ... with no gaps), so that

- an **edited** record no longer hashes to its stored hash;
- a **deleted** record leaves a gap in ``seq`` (or, if the rest were renumbered, a broken link);
- an **inserted** record breaks the link of the record after it (or duplicates a ``seq``);
- a **truncated** tail is caught against an *anchor* — the last ``seq`` and hash someone noted
  (``audit verify`` prints it) or sent elsewhere.

Appending a forged record at the very end with a correctly computed hash is not detectable from
the chain alone; anchors kept outside the database bound that window.

Records say who did what to which object, when, from where and with what outcome. They never
carry patient names or IDs (UIDs are fine): :class:`AuditRecord` refuses detail keys that name
patient attributes. :func:`to_atna` gives the fields of a DICOM PS3.15 A.5 (IHE ATNA) audit
message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64

OUTCOMES = ("success", "minor_failure", "serious_failure", "major_failure")

# Keys that would put patient identity into a record; refused outright.
_PATIENT_KEYS = frozenset(
    {"patient_name", "patientname", "patient_id", "patientid", "patient_birth_date", "mrn"}
)


def utc_now_iso() -> str:
    """The current time as UTC ISO 8601 with microseconds and a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class AuditRecord:
    """One audited event. ``source`` is where it came from (client IP, or host of the process)."""

    seq: int
    at: str
    actor: str
    action: str
    target: str
    outcome: str = "success"
    source: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise ValueError("seq starts at 1")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        bad = {k for k in self.details if k.lower().replace("-", "_") in _PATIENT_KEYS}
        if bad:
            raise ValueError(f"audit details must not carry patient identity: {sorted(bad)}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "source": self.source,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class ChainedRecord:
    """A record as stored: with the hash it chains from and its own hash."""

    record: AuditRecord
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return self.record.as_dict() | {"prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True)
class Anchor:
    """The last record someone noted: the chain must still reach it, unchanged."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``"SEQ:HASH"``, as ``audit verify`` prints it."""
        seq, _, digest = text.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise ValueError("an anchor is SEQ:SHA256 (e.g. 42:9f86d0...)")
        return cls(int(seq), digest.lower())

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


@dataclass(frozen=True)
class Problem:
    """What is wrong at one place of the chain. ``kind``: edited | broken_link | missing |
    out_of_order | truncated | anchor_mismatch."""

    seq: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.kind}: {self.message}"


def unknown_name(username: str) -> str:
    """How the audit (and a lockout counter) names a login attempt for a user that does not
    exist: never the text typed, which is often a password entered in the wrong field. The same
    text gives the same name, so repeated attempts stay countable."""
    return "unknown:" + hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()[:12]


def canonical_json(data: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same record always gives the same bytes."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_hash(prev_hash: str, record: AuditRecord) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(record.as_dict())).hexdigest()


def chain(prev: ChainedRecord | None, record: AuditRecord) -> ChainedRecord:
    """Link ``record`` after ``prev`` (``None``: the first record)."""
    prev_hash = prev.hash if prev is not None else GENESIS
    expected = prev.record.seq + 1 if prev is not None else 1
    if record.seq != expected:
        raise ValueError(f"the next record is seq {expected}, not {record.seq}")
    return ChainedRecord(record, prev_hash, record_hash(prev_hash, record))


def verify_chain(records: Iterable[ChainedRecord], anchor: Anchor | None = None) -> list[Problem]:
    """Everything wrong with ``records`` (in storage order by seq); empty when intact."""
    problems: list[Problem] = []
    prev_hash = GENESIS
    expected = 1
    seen: dict[int, str] = {}
    for entry in records:
        seq = entry.record.seq
        if seq < expected:
            problems.append(
                Problem(
                    seq, "out_of_order", f"seq {seq} after {expected - 1}: inserted or reordered"
                )
            )
        elif seq > expected:
            first, last = expected, seq - 1
            gap = f"{first}" if first == last else f"{first}..{last}"
            problems.append(Problem(seq, "missing", f"record(s) {gap} deleted"))
        if record_hash(entry.prev_hash, entry.record) != entry.hash:
            problems.append(Problem(seq, "edited", "content does not match its hash"))
        elif entry.prev_hash != prev_hash:
            problems.append(Problem(seq, "broken_link", "does not chain from the record before it"))
        seen.setdefault(seq, entry.hash)
        prev_hash = entry.hash
        expected = max(expected, seq + 1)
    if anchor is not None:
        if anchor.seq not in seen:
            problems.append(
                Problem(
                    anchor.seq,
                    "truncated",
                    f"the anchored record is gone (the log ends at {expected - 1})",
                )
            )
        elif seen[anchor.seq] != anchor.hash:
            problems.append(Problem(anchor.seq, "anchor_mismatch", "differs from the anchor"))
    return problems


def head(records: Sequence[ChainedRecord]) -> Anchor | None:
    return Anchor(records[-1].record.seq, records[-1].hash) if records else None


# -- DICOM PS3.15 A.5 / IHE ATNA --------------------------------------------------------------


@dataclass(frozen=True)
class AtnaEvent:
    """An audit action's DICOM PS3.15 A.5 event: EventID (CID 400) and EventActionCode."""

    code: str
    meaning: str
    action: str  # C create, R read, U update, D delete, E execute


_ACTIVITY = "110100", "Application Activity"
_ACCESSED = "110103", "DICOM Instances Accessed"
_TRANSFERRED = "110104", "DICOM Instances Transferred"
_EXPORT = "110106", "Export"
_IMPORT = "110107", "Import"
_SECURITY = "110113", "Security Alert"
_AUTHENTICATION = "110114", "User Authentication"


def _ev(kind: tuple[str, str], action: str) -> AtnaEvent:
    return AtnaEvent(kind[0], kind[1], action)


# Every action the agent and the hub write, and its ATNA event: one explicit entry each (a test
# walks the source and fails on an action missing here). Security Alert covers changes to who
# may do what (users, TOTP, devices, verifiers) and refused authentication material.
AUDIT_ACTIONS: dict[str, AtnaEvent] = {
    # people signing in and out (hub and the agent's LAN app)
    "login": _ev(_AUTHENTICATION, "E"),
    "logout": _ev(_AUTHENTICATION, "E"),
    "refresh": _ev(_AUTHENTICATION, "E"),
    "recovery_code_used": _ev(_AUTHENTICATION, "E"),
    "totp_step_claimed": _ev(_AUTHENTICATION, "E"),
    "lan.login": _ev(_AUTHENTICATION, "E"),
    "lan.logout": _ev(_AUTHENTICATION, "E"),
    "totp_code_replayed": _ev(_SECURITY, "E"),
    "totp_enroll": _ev(_SECURITY, "U"),
    "totp_confirm": _ev(_SECURITY, "U"),
    "user_create": _ev(_SECURITY, "C"),
    "user_update": _ev(_SECURITY, "U"),
    "user_delete": _ev(_SECURITY, "D"),
    "lan.sessions_ended": _ev(_SECURITY, "U"),
    "lan.verifiers_synced": _ev(_SECURITY, "U"),
    # devices (agents) and their credentials
    "device.code_issued": _ev(_SECURITY, "C"),
    "device.enroll": _ev(_SECURITY, "E"),
    "device.enrolled": _ev(_SECURITY, "C"),
    "device.renewed": _ev(_SECURITY, "U"),
    "device.credential_renewed": _ev(_SECURITY, "U"),
    "device.revoked": _ev(_SECURITY, "D"),
    "device.verifiers_read": _ev(_SECURITY, "R"),
    # images in: taken in at the agent, received at the hub
    "instance.accepted": _ev(_IMPORT, "C"),
    "instance.wrapped": _ev(_IMPORT, "C"),
    "instance.duplicate": _ev(_IMPORT, "R"),
    "instance.quarantined": _ev(_IMPORT, "C"),
    "lan.batch_created": _ev(_IMPORT, "C"),
    "lan.upload_received": _ev(_IMPORT, "C"),
    "lan.batch_sent": _ev(_IMPORT, "E"),
    "quarantine.released": _ev(_ACCESSED, "U"),
    "quarantine.deleted": _ev(_ACCESSED, "D"),
    "instance.received": _ev(_TRANSFERRED, "C"),
    "segment.received": _ev(_TRANSFERRED, "C"),
    "study.committed": _ev(_TRANSFERRED, "C"),
    "study.delivered": _ev(_TRANSFERRED, "R"),
    "study_claim_held": _ev(_ACCESSED, "U"),
    "study_claim_accepted": _ev(_ACCESSED, "U"),
    "study_claim_refused": _ev(_ACCESSED, "U"),
    "study_claim_unclaimed": _ev(_ACCESSED, "U"),
    # images out to the archives
    "forward.done": _ev(_TRANSFERRED, "R"),
    "forward.dead": _ev(_TRANSFERRED, "R"),
    # reports
    "report.posted": _ev(_IMPORT, "C"),
    "report.received": _ev(_IMPORT, "C"),
    "report.read": _ev(_ACCESSED, "R"),
    "report.pacs_stored": _ev(_EXPORT, "R"),
    "report.pacs_retry": _ev(_EXPORT, "R"),
    "report.pacs_skipped": _ev(_EXPORT, "R"),
    "report.pacs_refused": _ev(_EXPORT, "R"),
    "push.subscribed": _ev(_ACTIVITY, "C"),
    # administration
    "admin.job_retry": _ev(_ACTIVITY, "U"),
    "admin.rules_put": _ev(_ACTIVITY, "U"),
    "admin.rules_reload": _ev(_ACTIVITY, "U"),
}
_UNLISTED = _ev(_ACTIVITY, "E")
_OUTCOME_CODES = {"success": 0, "minor_failure": 4, "serious_failure": 8, "major_failure": 12}


def to_atna(entry: ChainedRecord, audit_source_id: str = "relaypacs") -> dict[str, Any]:
    """The fields of a DICOM PS3.15 A.5.1 audit message for this record (as a dict)."""
    r = entry.record
    event = AUDIT_ACTIONS.get(r.action, _UNLISTED)
    code, meaning, action = event.code, event.meaning, event.action
    is_study = r.action.startswith("study.")
    return {
        "EventIdentification": {
            "EventID": {"csd-code": code, "codeSystemName": "DCM", "originalText": meaning},
            "EventActionCode": action,
            "EventDateTime": r.at,
            "EventOutcomeIndicator": _OUTCOME_CODES[r.outcome],
            "EventTypeCode": {"csd-code": r.action, "codeSystemName": "RelayPACS"},
        },
        "ActiveParticipant": [
            {
                "UserID": r.actor,
                "UserIsRequestor": True,
                "NetworkAccessPointID": r.source,
                "NetworkAccessPointTypeCode": "2",  # IP address (or host name: "1")
            }
        ],
        "AuditSourceIdentification": {"AuditSourceID": audit_source_id},
        "ParticipantObjectIdentification": [
            {
                "ParticipantObjectTypeCode": 2,  # system object
                "ParticipantObjectTypeCodeRole": 3 if is_study else 4,  # report | domain resource
                "ParticipantObjectIDTypeCode": (
                    {
                        "csd-code": "110180",
                        "codeSystemName": "DCM",
                        "originalText": "Study Instance UID",
                    }
                    if is_study
                    else {
                        "csd-code": "object",
                        "codeSystemName": "RelayPACS",
                        "originalText": "UID",
                    }
                ),
                "ParticipantObjectID": r.target,
                "ParticipantObjectDetail": dict(r.details),
            }
        ],
        "RelayPACS": {"seq": r.seq, "hash": entry.hash, "prev_hash": entry.prev_hash},
    }


def verify_report(
    records: Sequence[ChainedRecord], anchor: str | None = None
) -> tuple[list[str], str]:
    """What ``audit verify`` prints: (one line per problem, the summary line).

    No problem lines means the log is intact.
    """
    problems = verify_chain(records, Anchor.parse(anchor) if anchor else None)
    if problems:
        summary = f"audit log TAMPERED: {len(problems)} problem(s) in {len(records)} records"
        return [str(p) for p in problems], summary
    last = head(records)
    return [], f"audit log intact: {len(records)} records" + (f" (anchor {last})" if last else "")


EXPORT_FORMATS = ("jsonl", "atna")


def export_lines(records: Iterable[ChainedRecord], fmt: str, audit_source_id: str) -> Iterator[str]:
    """What ``audit export`` prints: one JSON object a line, as stored or as ATNA fields."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError("--format is jsonl or atna")
    for r in records:
        out = r.as_dict() if fmt == "jsonl" else to_atna(r, audit_source_id)
        yield json.dumps(out, sort_keys=True)
