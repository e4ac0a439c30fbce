"""One wording table for refusals: every reason the validator or the archive reader can give has
words, and docs/ingest.md shows the same words."""

from __future__ import annotations

import re
from pathlib import Path

from relaypacs_shared import archives, dicom
from relaypacs_shared.refusals import REFUSALS, refusal, words

ROOT = Path(__file__).resolve().parents[2]


def _codes_raised(module: object) -> set[str]:
    source = Path(module.__file__).read_text(encoding="utf-8")  # type: ignore[attr-defined]
    return set(re.findall(r'(?:DicomValidationError|ArchiveRefused)\(\s*"([a-z_]+)"', source))


def test_every_reason_raised_has_plain_words() -> None:
    raised = _codes_raised(dicom) | _codes_raised(archives)
    assert "pixel_data_mismatch" in raised and "archive_bomb" in raised
    assert raised - set(REFUSALS) == set()
    for code in REFUSALS:
        w = words(code)
        assert w["label"] and w["explanation"] and w["what_to_do"].endswith(".")
        assert "_" not in w["explanation"]  # words, not codes


def test_hub_and_unknown_codes_still_get_words() -> None:
    assert refusal("hub_checksum").meaning == "the hub refused it (checksum)"
    assert refusal("cosmic_ray").label == "cosmic_ray"


def test_docs_show_the_same_words() -> None:
    doc = (ROOT / "docs" / "ingest.md").read_text(encoding="utf-8")
    for code, r in REFUSALS.items():
        assert f"| `{code}` | {r.label} | {r.meaning} | {r.todo} |" in doc, code
