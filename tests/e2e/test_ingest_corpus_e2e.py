"""Odd but real files dropped into a running agent's inbox, through a real hub to the archive:
bare datasets without a DICOM header go through wrapped, a JPEG-labelled file with plain pixels
is refused with its reason, and a CD export leaves the inbox once its images are taken."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import FileSet
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from relaypacs_dev.generate import generate_study
from tests.e2e.helpers import archive_files
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _meta_end(data: bytes) -> int:
    return 132 + 12 + struct.unpack("<I", data[140:144])[0]


def _jpeg_labelled(src: Path) -> bytes:
    data = src.read_bytes()
    meta = pydicom.dcmread(src, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.50")  # JPEG Baseline, pixels stay plain
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta)
    return data[:132] + buf.getvalue() + data[_meta_end(data) :]


def test_bare_datasets_mislabelled_pixels_and_a_cd_export(tmp_path: Path) -> None:
    cd_study = generate_study(tmp_path / "cdsrc", instances=3, seed=931, rows=64, columns=64)
    odd = generate_study(tmp_path / "odd", instances=1, seed=932, rows=64, columns=64)
    archive = tmp_path / "archive"
    hub = HubProcess(
        tmp_path, destinations_file=str(folder_destinations(tmp_path / "d.toml", archive))
    )
    hub.start()
    agent = AgentProcess(tmp_path / "a", hub.url)
    agent.start()
    try:
        rtstruct = (PYDICOM_TEST_FILES / "rtstruct.dcm").read_bytes()  # shipped bare
        plan = (PYDICOM_TEST_FILES / "rtplan.dcm").read_bytes()
        bare_plan = plan[_meta_end(plan) :]
        staging = tmp_path / "drop"
        staging.mkdir()
        (staging / "RS_OLD_EXPORT").write_bytes(rtstruct)
        (staging / "RP_OLD_EXPORT").write_bytes(bare_plan)
        (staging / "mislabelled.dcm").write_bytes(_jpeg_labelled(odd.files[0]))
        fs = FileSet()
        for f in cd_study.files:
            fs.add(f)
        fs.write(staging / "CD")
        (staging / "CD" / "README.TXT").write_text("burnt by the modality\n")
        staging.rename(agent.inbox / "drop")  # appears at once, as a finished copy

        rtstruct_uid = str(
            pydicom.dcmread(PYDICOM_TEST_FILES / "rtstruct.dcm", force=True).SOPInstanceUID
        )
        rtplan_uid = str(pydicom.dcmread(PYDICOM_TEST_FILES / "rtplan.dcm").SOPInstanceUID)
        wanted = {rtstruct_uid, rtplan_uid, *cd_study.sop_instance_uids}
        wait_for(lambda: wanted <= set(archive_files(archive)), 120, "the archive to hold them")
        found = archive_files(archive)
        # Wrapped: a header added in front, the dataset's bytes as they came.
        assert found[rtstruct_uid].read_bytes().endswith(rtstruct)
        assert found[rtplan_uid].read_bytes().endswith(bare_plan)
        for sop in wanted:
            ds = pydicom.dcmread(found[sop])
            assert ds.file_meta.TransferSyntaxUID.is_little_endian and ds.SOPInstanceUID == sop
        assert odd.sop_instance_uids[0] not in found
        status = agent.status()
        assert status["totals"]["quarantine_reasons"] == {"pixel_data_mismatch": 1}
        # The CD's index and emptied folders are gone; only what was not taken stays.
        wait_for(
            lambda: (
                sorted(p.relative_to(agent.inbox).as_posix() for p in agent.inbox.rglob("*"))
                == ["drop", "drop/CD", "drop/CD/README.TXT"]
            ),
            30,
            "the inbox to keep only the CD's readme",
        )
    finally:
        agent.terminate()
        hub.terminate()
