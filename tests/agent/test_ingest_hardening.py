"""What the agent does with hostile names and odd but real files: file names that try to break
the quarantine listing, a compressed transfer syntax over native pixels, raw datasets without a
Part 10 header, and a CD folder once its images are taken."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from typer.testing import CliRunner

from relaypacs_agent.cli import app
from relaypacs_agent.config import AgentSettings
from relaypacs_agent.ingest.pipeline import Ingestor, Source
from relaypacs_agent.ingest.watcher import InboxWatcher
from relaypacs_agent.runner import build_ingestor
from relaypacs_agent.store.db import Store
from relaypacs_dev.generate import GeneratedStudy

if TYPE_CHECKING:
    from .conftest import AgentDirs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _cli_ingestor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ingestor:
    monkeypatch.setenv("RELAYPACS_AGENT_DATA_DIR", str(tmp_path / "agent"))
    monkeypatch.setenv("RELAYPACS_AGENT_MIN_FREE_BYTES", "0")
    settings = AgentSettings()
    return build_ingestor(settings, Store(settings.db_path))


def test_quarantine_list_keeps_one_line_per_file_whatever_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ing = _cli_ingestor(tmp_path, monkeypatch)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = [
        "scan\n    7  2026-01-01 00:00:00Z  ok  forged line.dcm",
        "bell\x07\x1b[2Jclear.dcm",
        "tab\there.dcm",
    ]
    for name in names:
        (inbox / name).write_text("not an image\n")
        assert ing.ingest(inbox / name, Source(kind="folder", name="in\nbox")).outcome == (
            "quarantined"
        )
    ing.store.close()
    out = CliRunner().invoke(app, ["quarantine", "list"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) == 3, lines
    assert all("\x1b" not in line and "\x07" not in line for line in lines)
    assert "scan\\n    7  2026-01-01" in lines[0]
    assert "bell\\x07\\x1b[2Jclear.dcm" in lines[1]
    assert "tab\\there.dcm" in lines[2]
    assert all("(folder:in\\nbox): the file is not a DICOM image" in line for line in lines)
    # The JSON keeps the names as they are (escaped by JSON itself).
    listed = json.loads(CliRunner().invoke(app, ["quarantine", "list", "--json"]).output)
    assert [e["original_name"] for e in listed] == names
    shown = CliRunner().invoke(app, ["quarantine", "show", str(listed[0]["id"])])
    assert "scan\\n    7" in shown.output and "\nforged" not in shown.output


# -- datasets without a Part 10 header -------------------------------------------------------

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _bare(src: Path) -> bytes:
    """The dataset of a Part 10 file without its preamble, 'DICM' and File Meta Information."""
    data = src.read_bytes()
    return data[132 + 12 + struct.unpack("<I", data[140:144])[0] :]


def test_datasets_without_a_dicom_header_are_wrapped_recorded_and_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real bare datasets (an RT Structure Set, RT Plans, a palette-colour image), as old exports
    write them, go through with a header added; a cut one and a text file are still refused."""
    ing = _cli_ingestor(tmp_path, monkeypatch)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bare = {
        "RTSTRUCT": (PYDICOM_TEST_FILES / "rtstruct.dcm").read_bytes(),  # as pydicom ships it
        "RTPLAN": _bare(PYDICOM_TEST_FILES / "rtplan.dcm"),  # implicit VR
        "RTIONPLAN": (PYDICOM_TEST_FILES / "ExplVR_LitEndNoMeta.dcm").read_bytes(),
        "PALETTE": _bare(PYDICOM_TEST_FILES / "examples_palette.dcm"),  # explicit VR, pixels
    }
    assert all(data[128:132] != b"DICM" for data in bare.values())
    for name, data in bare.items():
        (inbox / name).write_bytes(data)
    (inbox / "RTPLAN_CUT").write_bytes(bare["RTPLAN"][:-40])
    (inbox / "letter.txt").write_text("Dear colleague,\n")
    watcher = InboxWatcher(inbox, ing, settle_seconds=1.0, scan_interval=1.0)
    watcher.scan_once(now=0.0)
    watcher.scan_once(now=5.0)
    assert watcher.results == {"accepted": 4, "quarantined": 2}
    assert [p for p in inbox.iterdir()] == []

    rows = ing.store.query("SELECT * FROM instances ORDER BY source_path")
    assert {Path(r["source_path"]).name for r in rows} == set(bare)
    for r in rows:
        original = bare[Path(r["source_path"]).name]
        spooled = Path(r["spool_path"]).read_bytes()
        assert spooled[128:132] == b"DICM" and spooled.endswith(original)  # bytes unchanged
        ds = pydicom.dcmread(r["spool_path"])
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == r["sop_instance_uid"]
        assert ds.file_meta.TransferSyntaxUID == r["transfer_syntax_uid"]
        assert "without a DICOM file header" in r["warnings"]
    syntax = {Path(r["source_path"]).name: r["transfer_syntax_uid"] for r in rows}
    assert syntax == {
        "RTSTRUCT": ImplicitVRLittleEndian, "RTPLAN": ImplicitVRLittleEndian,
        "RTIONPLAN": ExplicitVRLittleEndian, "PALETTE": ExplicitVRLittleEndian,
    }  # fmt: skip
    palette = next(r for r in rows if Path(r["source_path"]).name == "PALETTE")
    assert pydicom.dcmread(palette["spool_path"]).pixel_array.shape  # a viewer can show it
    q = {r["original_name"]: r for r in ing.store.quarantine_entries()}
    assert q["RTPLAN_CUT"]["reason"] == "truncated"
    assert "without a DICOM header" in q["RTPLAN_CUT"]["message"]
    assert Path(q["RTPLAN_CUT"]["path"]).read_bytes() == bare["RTPLAN"][:-40]  # kept as it came
    assert q["letter.txt"]["reason"] == "not_dicom"
    ing.store.close()

    out = CliRunner().invoke(app, ["wrapped"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) == 4
    assert sum("Implicit VR Little Endian" in line for line in lines) == 2
    assert sum("Explicit VR Little Endian" in line for line in lines) == 2
    listed = json.loads(CliRunner().invoke(app, ["wrapped", "--json"]).output)
    assert {e["original_sha256"] for e in listed} == {
        hashlib.sha256(data).hexdigest() for data in bare.values()
    }
    verify = CliRunner().invoke(app, ["audit", "verify"])
    assert verify.exit_code == 0, verify.output


# -- a CD export dropped into the inbox ----------------------------------------------------


def _cd(folder: Path, study: GeneratedStudy) -> list[Path]:
    fs = FileSet()
    for f in study.files:
        fs.add(f)
    fs.write(folder)
    return sorted(p for p in folder.rglob("IM*") if p.is_file())


def _scan(watcher: InboxWatcher, t: float) -> float:
    watcher.scan_once(now=t)
    watcher.scan_once(now=t + 5)
    return t + 10


def test_a_cd_folder_leaves_the_inbox_once_its_images_are_taken(
    ingestor: Ingestor, small_study: GeneratedStudy, dirs: AgentDirs, tmp_path: Path
) -> None:
    cd = dirs.inbox / "CD_2024"
    images = _cd(cd, small_study)
    # The images arrive after their index, as a slow copy would bring them.
    held_back = tmp_path / "later"
    held_back.mkdir()
    for i, im in enumerate(images[1:]):
        im.rename(held_back / f"{i}")
    watcher = InboxWatcher(dirs.inbox, ingestor, settle_seconds=1, scan_interval=1)
    t = _scan(watcher, 0)
    assert watcher.results == {"accepted": 1}
    assert (cd / "DICOMDIR").exists(), "two images it lists have not arrived yet"
    for i, im in enumerate(images[1:]):
        im.parent.mkdir(parents=True, exist_ok=True)
        (held_back / f"{i}").rename(im)
    (cd / images[0].relative_to(cd).parent / "NOTES.TXT").write_text("not an image\n")
    _scan(watcher, t)
    assert watcher.results == {"accepted": 3}
    # Only what was not taken is left: the note (never removed) and the folders holding it.
    left = sorted(p.relative_to(dirs.inbox).as_posix() for p in dirs.inbox.rglob("*"))
    note = images[0].relative_to(dirs.inbox).parent
    assert left == [*(p.as_posix() for p in reversed(note.parents[:-1])), note.as_posix(),
                    (note / "NOTES.TXT").as_posix()]  # fmt: skip


def test_a_cd_folder_taken_before_a_restart_is_tidied_after_it(
    ingestor: Ingestor, small_study: GeneratedStudy, dirs: AgentDirs
) -> None:
    cd = dirs.inbox / "cd"
    images = _cd(cd, small_study)
    for im in images:  # taken by an earlier run that stopped before tidying
        assert ingestor.ingest(im, Source(kind="folder")).outcome == "accepted"
    assert (cd / "DICOMDIR").exists()
    _scan(InboxWatcher(dirs.inbox, ingestor, settle_seconds=1, scan_interval=1), 0)
    assert list(dirs.inbox.iterdir()) == []


def test_a_copy_mode_folder_keeps_its_cd_export_as_it_is(
    ingestor: Ingestor, small_study: GeneratedStudy, dirs: AgentDirs
) -> None:
    cd = dirs.inbox / "cd"
    images = _cd(cd, small_study)
    watcher = InboxWatcher(
        dirs.inbox, ingestor, settle_seconds=1, scan_interval=1,
        source=Source(kind="folder", keep_original=True),
    )  # fmt: skip
    _scan(watcher, 0)
    assert watcher.results == {"accepted": 3}
    assert (cd / "DICOMDIR").exists() and all(im.exists() for im in images)
