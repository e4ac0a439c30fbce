"""DICOM store statuses in plain words: C-STORE status codes (PS3.4 Annex B, PS3.7 C) and the
Failure / Warning Reasons of a STOW-RS response (PS3.18 10.5.3), which use the same values.

Shared by the hub (its DIMSE and DICOMweb destinations) and the agent (reports stored into the
clinic's PACS), so a refusal reads the same wherever it happens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SUCCESS = 0x0000
# Stored, with a remark: coercion of data elements, elements discarded, data set does not match.
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
# Refused for lack of resources now: a later try may succeed.
OUT_OF_RESOURCES = 0xA700

_FAILURE_REASONS: Mapping[int, str] = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance (the archive already holds this SOP Instance UID)",
    0x0112: "no such SOP instance",
    0x0117: "invalid object instance",
    0x0119: "SOP class and instance conflict",
    0x0122: "SOP class not supported by the archive",
    0x0124: "refused: not authorized",
    0x0210: "duplicate invocation",
    0x0211: "unrecognized operation",
    0x0212: "mistyped argument",
    0x0213: "resource limitation at the archive",
    0xC122: "transfer syntax not supported by the archive",
}
_FAILURE_REASON_RANGES: Sequence[tuple[int, str]] = (
    (OUT_OF_RESOURCES, "out of resources at the archive"),
    (0xA900, "data set does not match SOP class"),
    (0xC000, "cannot understand the data set"),
)
_WARNING_REASONS: Mapping[int, str] = {
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}

# dcm4chee-arc's own Failure Reasons (org.dcm4chee.arc.store.StoreService), which sit in the
# 0xA7xx range the standard gives to "out of resources" but mean something else entirely.
DCM4CHEE_FAILURE_REASONS: Mapping[int, str] = {
    0xA770: "duplicate rejection note",
    0xA771: "subsequent occurrence of a rejected object",
    0xA772: "rejection failed: no such instance",
    0xA773: "rejection failed: class-instance conflict",
    0xA774: "rejection failed: already rejected",
    0xA775: "rejection for retention policy expired not allowed",
    0xA776: "retention period of the study not yet expired",
    0xA777: "patient ID missing in the object",
    0xA778: "conflicting patient ID not accepted",
    0xA779: "conflicting patient attributes rejected",
}
_PROFILE_FAILURE_REASONS: Mapping[str, Mapping[int, str]] = {
    "dcm4chee-arc": DCM4CHEE_FAILURE_REASONS,
}


def describe_failure_reason(code: int | None, profile: str = "generic") -> str:
    """A Failure Reason (0008,1197) in plain words, with its code: ``out of resources (0xA700)``."""
    if code is None:
        return "archive refused the instance without giving a reason"
    words = _PROFILE_FAILURE_REASONS.get(profile, {}).get(code) or _FAILURE_REASONS.get(code)
    if words is None:
        for base, range_words in _FAILURE_REASON_RANGES:
            if code & 0xFF00 == base:
                words = range_words
                break
        else:
            words = "failure reason"
    return f"{words} (0x{code:04X})"


def describe_warning_reason(code: int) -> str:
    return f"{_WARNING_REASONS.get(code, 'warning reason')} (0x{code:04X})"


def out_of_resources(code: int) -> bool:
    """A 0xA7xx status: the archive is short of resources now (dcm4chee-arc's own 0xA77x
    reasons excepted, which are refusals)."""
    return code & 0xFF00 == OUT_OF_RESOURCES and code not in DCM4CHEE_FAILURE_REASONS
