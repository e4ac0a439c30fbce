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

# action prefix -> (EventID code, meaning, EventActionCode)
_EVENTS: dict[str, tuple[str, str, str]] = {
    "instance.received": ("110104", "DICOM Instances Transferred", "C"),
    "segment.received": ("110104", "DICOM Instances Transferred", "C"),
    "instance.accepted": ("110107", "Import", "C"),
    "instance.duplicate": ("110107", "Import", "R"),
    "instance.quarantined": ("110107", "Import", "C"),
    "quarantine.": ("110103", "DICOM Instances Accessed", "U"),
    "study.committed": ("110104", "DICOM Instances Transferred", "C"),
    "study.delivered": ("110104", "DICOM Instances Transferred", "R"),
    "forward.": ("110104", "DICOM Instances Transferred", "R"),
    "login": ("110114", "User Authentication", "E"),
    "admin.": ("110100", "Application Activity", "U"),
}
_OUTCOME_CODES = {"success": 0, "minor_failure": 4, "serious_failure": 8, "major_failure": 12}


def to_atna(entry: ChainedRecord, audit_source_id: str = "relaypacs") -> dict[str, Any]:
    """The fields of a DICOM PS3.15 A.5.1 audit message for this record (as a dict)."""
    r = entry.record
    code, meaning, action = ("110100", "Application Activity", "E")
    for prefix, event in _EVENTS.items():
        if r.action == prefix or (prefix.endswith(".") and r.action.startswith(prefix)):
            code, meaning, action = event
            break
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
