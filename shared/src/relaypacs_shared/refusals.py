"""Why a file was refused, in plain words: one table for the CLI, the LAN API and the PWA.

Each reason code (``DicomValidationError.reason``, the archive and pipeline codes) has a short
``label`` (a heading, a count), a ``meaning`` (what happened, one sentence) and ``todo`` (what
the person holding the file can do about it). The agent's CLI prints them, its LAN API sends
them with every refusal so the PWA shows the same words, and ``docs/ingest.md`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    label: str
    meaning: str
    todo: str


_RESEND = "Copy or export the file again from where it came from, then send it again."
_EXPORT = "Export the study again as DICOM from the scanner or the PACS, then send it."
_IT = "Ask IT to look at it in the agent's quarantine (relaypacs-agent quarantine show)."

REFUSALS: dict[str, Refusal] = {
    "empty": Refusal("Empty file", "the file is empty (0 bytes)", _RESEND),
    "too_large": Refusal(
        "Too large for the agent",
        "the file is larger than the agent accepts",
        "Send it another way, or ask IT to raise the agent's size limit.",
    ),
    "not_dicom": Refusal(
        "Not a DICOM file",
        "the file is not a DICOM image (a document, a photo, a viewer program)",
        "Only DICOM images can be sent; export the study as DICOM from the scanner or PACS.",
    ),
    "unreadable": Refusal(
        "DICOM header cannot be read",
        "the file's DICOM header is damaged and cannot be read",
        _EXPORT,
    ),
    "truncated": Refusal(
        "Cut short (incomplete copy)",
        "the file is cut short: a copy or transfer stopped before its end",
        _RESEND,
    ),
    "too_deep": Refusal(
        "Nested too deeply",
        "the file's header is nested deeper than the agent reads safely",
        _IT,
    ),
    "missing_uid": Refusal(
        "Image ID missing",
        "an identifier every image needs (SOP Class/Instance, Study or Series UID) is missing",
        _EXPORT,
    ),
    "malformed_uid": Refusal(
        "Image ID malformed",
        "one of the image's identifiers (UIDs) is malformed",
        _EXPORT,
    ),
    "unknown_transfer_syntax": Refusal(
        "Unknown image encoding",
        "the image is encoded in a way the agent does not know",
        "Export it again uncompressed (or as JPEG) from the scanner or PACS, then send it.",
    ),
    "pixel_data_mismatch": Refusal(
        "Image encoding mislabelled",
        "the file says its pixels are compressed one way but they are stored another way; "
        "a PACS or viewer would fail to show it",
        "Export the image again from the scanner or PACS (the exporting program wrote it "
        "wrongly), then send it.",
    ),
    "conflict": Refusal(
        "Same image ID, different content",
        "another image with the same identifier but different content is already held",
        "A person must decide which version is right: "
        "relaypacs-agent quarantine release --replace, or delete.",
    ),
    "replaced": Refusal(
        "Replaced by another version",
        "the version of an image that a person replaced with another",
        "Nothing, unless the replacement was a mistake: then release this one instead.",
    ),
    "lost_in_crash": Refusal(
        "Lost in a restart",
        "the agent restarted while taking this file in and no longer has it",
        "Send the file again.",
    ),
    "archive_unreadable": Refusal(
        "Zip cannot be read", "the zip file is damaged or not a zip", _RESEND
    ),
    "archive_encrypted": Refusal(
        "Zip is password-protected",
        "the zip is encrypted and the agent has no password",
        "Make the zip again without a password, then send it.",
    ),
    "archive_unsafe_path": Refusal(
        "Zip with unsafe paths",
        "the zip has entries that would land outside its folder",
        "Make the zip again from the study's folder, then send it.",
    ),
    "archive_too_many_entries": Refusal(
        "Zip has too many files",
        "the zip has more files than the agent accepts",
        "Send the study in several smaller zips, or the folder itself.",
    ),
    "archive_too_large": Refusal(
        "Zip expands too large",
        "the zip expands to more than the agent accepts",
        "Send the study in several smaller zips, or the folder itself.",
    ),
    "hub_study_refused": Refusal(
        "Refused by the hub's admin",
        "another facility sent this study first, and an admin of the hub refused it for this one",
        "Read the admin's words (relaypacs-agent quarantine show); export the study again, or ask "
        "the hub's admin.",
    ),
    "archive_bomb": Refusal(
        "Zip bomb (expands far too much)",
        "the zip expands far more than real images do (a zip bomb)",
        "Do not send it again; tell IT where it came from.",
    ),
}


def refusal(code: str) -> Refusal:
    """The words for ``code``; a hub refusal (``hub_*``) or an unknown code gets generic ones."""
    if code in REFUSALS:
        return REFUSALS[code]
    if code.startswith("hub_"):
        return Refusal(
            "Refused by the hub",
            f"the hub refused it ({code[4:]})",
            "Ask IT: the hub's log says why.",
        )
    return Refusal(code, code, _IT)


def explain(code: str) -> str:
    """What happened, in one phrase (the CLI's quarantine explanation)."""
    return refusal(code).meaning


def words(code: str) -> dict[str, str]:
    """The words as the LAN API sends them with a refusal."""
    r = refusal(code)
    return {"label": r.label, "explanation": r.meaning, "what_to_do": r.todo}
