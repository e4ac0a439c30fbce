"""Archive safety rules and dciodvfy findings: pure functions, checked without touching a disk."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from relaypacs_shared.archives import (
    ArchiveEntry,
    ArchiveLimits,
    ArchiveRefused,
    InflateBudget,
    PlannedMember,
    plan_extraction,
    referenced_file_ids,
    safe_relative_path,
)
from relaypacs_shared.conformance import parse_dciodvfy

MB = 1024 * 1024
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR CS:UserWarning")


def _refused(entries: list[ArchiveEntry], limits: ArchiveLimits | None = None) -> str:
    with pytest.raises(ArchiveRefused) as caught:
        plan_extraction(entries, limits or ArchiveLimits())
    return caught.value.reason


@pytest.mark.parametrize(
    "name",
    ["../evil.dcm", "a/../../evil.dcm", "/etc/passwd", "C:\\Windows\\x.dcm", "a\\..\\..\\x",
     "c:/x.dcm", "a/\x00b", "./", ""],
)  # fmt: skip
def test_names_that_leave_the_folder_are_refused(name: str) -> None:
    assert _refused([ArchiveEntry(name, 10, 10)]) == "archive_unsafe_path"


def test_safe_names_are_normalised() -> None:
    assert safe_relative_path("./CT/./IM1") == PurePosixPath("CT/IM1")
    assert safe_relative_path("DICOM\\PA0\\ST0\\IM0") == PurePosixPath("DICOM/PA0/ST0/IM0")


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.lists(st.sampled_from(["a", "..", ".", "", "/", "\\", "b.dcm", "C:", "%2e%2e"]),
                min_size=1, max_size=8))  # fmt: skip
def test_any_name_is_refused_or_stays_inside(parts: list[str]) -> None:
    name = "".join(parts)
    try:
        path = safe_relative_path(name)
    except ArchiveRefused:
        return
    assert not path.is_absolute()
    assert ".." not in path.parts
    assert path.parts and all(p not in ("", ".") for p in path.parts)


def test_a_symlink_and_an_encrypted_entry_are_refused() -> None:
    assert _refused([ArchiveEntry("link", 5, 5, is_symlink=True)]) == "archive_unsafe_path"
    assert _refused([ArchiveEntry("x.dcm", 5, 5, encrypted=True)]) == "archive_encrypted"


def test_limits_on_entries_size_and_ratio() -> None:
    limits = ArchiveLimits(max_total_bytes=10 * MB, max_entries=3, max_ratio=100)
    many = [ArchiveEntry(f"{i}.dcm", 10, 10) for i in range(4)]
    assert _refused(many, limits) == "archive_too_many_entries"
    big = [ArchiveEntry("a.dcm", 6 * MB, 6 * MB), ArchiveEntry("b.dcm", 6 * MB, 6 * MB)]
    assert _refused(big, limits) == "archive_too_large"
    bomb = [ArchiveEntry("bomb.dcm", 10_000, 5 * MB)]  # 500:1
    assert _refused(bomb, limits) == "archive_bomb"
    # Small files may compress a lot (all-zero padding) without being a bomb.
    assert plan_extraction([ArchiveEntry("tiny.dcm", 10, 100_000)], limits)


def test_the_plan_skips_folders_junk_and_repeated_names() -> None:
    plan = plan_extraction(
        [
            ArchiveEntry("CT/", 0, 0, is_dir=True),
            ArchiveEntry("CT/IM1", 5, 5),
            ArchiveEntry("__MACOSX/CT/._IM1", 5, 5),
            ArchiveEntry("CT/.DS_Store", 5, 5),
            ArchiveEntry("CT/IM1", 5, 5),
            ArchiveEntry("CT/IM2", 5, 5),
        ]
    )
    assert [str(m.path) for m in plan] == ["CT/IM1", "CT/IM2"]


def test_the_inflate_budget_catches_a_header_that_lies() -> None:
    member = PlannedMember("liar.dcm", PurePosixPath("liar.dcm"), file_size=2 * MB)
    budget = InflateBudget(member, compressed_size=1 * MB, limits=ArchiveLimits())
    budget.add(2 * MB)
    with pytest.raises(ArchiveRefused) as caught:
        budget.add(1)
    assert caught.value.reason == "archive_bomb"


def test_dicomdir_references_are_relative_paths_checked_like_entries() -> None:
    def record(*parts: str) -> Dataset:
        r = Dataset()
        r.ReferencedFileID = list(parts) if len(parts) > 1 else parts[0]
        return r

    dicomdir = Dataset()
    dicomdir.DirectoryRecordSequence = [Dataset(), record("DICOM", "ST0", "IM0"), record("IM1")]
    assert referenced_file_ids(dicomdir) == [PurePosixPath("DICOM/ST0/IM0"), PurePosixPath("IM1")]
    dicomdir.DirectoryRecordSequence = [record("..", "ETC", "PASSWD")]
    with pytest.raises(ArchiveRefused):
        referenced_file_ids(dicomdir)


def test_dciodvfy_findings_lose_their_values() -> None:
    output = "\n".join(
        [
            "Warning - Value dubious for this VR - (0x0010,0x0010) PN Patient's Name  "
            "PN [1] = <DOE^JOHN> - Retired Person Name form",
            "CTImage",
            "Error - Missing attribute Type 1 Required Element=<Rows> Module=<Image Pixel>",
            "(0x0009,0x1040) PN Patient Object Name  - Warning - Explicit value representation "
            "doesn't match data dictionary; Explicit <LO> Dictionary <PN>",
            "Error - Missing attribute Type 1 Required Element=<Rows> Module=<Image Pixel>",
        ]
    )
    findings = parse_dciodvfy(output)
    assert [f.level for f in findings] == ["warning", "error", "warning"]
    assert all("DOE" not in str(f) for f in findings)
    assert "Retired Person Name form" in findings[0].message
    assert findings[1].message == (
        "Missing attribute Type 1 Required Element=<Rows> Module=<Image Pixel>"
    )
    assert findings[2].message.startswith("(0x0009,0x1040) PN Patient Object Name:")
    assert parse_dciodvfy("CTImage\n") == []
