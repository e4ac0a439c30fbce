"""The C-STORE SCP against dcmtk's storescu and echoscu (real peers, in-process SCP)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID

from relaypacs_agent.ingest.dimse import StoreSCP
from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.store.db import Store
from relaypacs_dev.generate import GeneratedStudy, generate_study
from relaypacs_shared.dicom import validate_file
from relaypacs_shared.errors import DicomValidationError
from tests.support.dcmtk import echoscu, storescu
from tests.support.smallfs import small_filesystem

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# One file per compressed transfer syntax family pydicom ships.
CANDIDATES = ["SC_rgb_gdcm_KY.dcm", "MR_small_jp2klossless.dcm", "JPEG-lossy.dcm",
              "JPEGLSNearLossless_16.dcm", "SC_rgb_rle.dcm", "SC_rgb_small_odd_jpeg.dcm",
              "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm"]  # fmt: skip


PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
}  # fmt: skip


def _compressed() -> list[str]:
    """Candidates with distinct SOP Instance UIDs (the same image in two syntaxes conflicts)."""
    chosen: dict[str, str] = {}
    for name in CANDIDATES:
        try:
            info = validate_file(PYDICOM_TEST_FILES / name)
        except DicomValidationError:
            continue  # some of pydicom's files lack UIDs
        chosen.setdefault(info.sop_instance_uid, name)
    return list(chosen.values())


@pytest.fixture
def scp(ingestor: Ingestor) -> Iterator[StoreSCP]:
    server = StoreSCP(
        ingestor, host="127.0.0.1", port=0, allowed_calling_aets=["STORESCU", "ECHOSCU"],
        release_grace=0.5,
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


def _dataset_bytes(path: Path) -> bytes:
    """The dataset after the File Meta Information: what C-STORE carries."""
    ds = pydicom.dcmread(path, stop_before_pixels=False)
    start = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return path.read_bytes()[start:]


def test_echo_is_answered_and_unknown_callers_are_rejected(scp: StoreSCP) -> None:
    assert echoscu(scp.bound_port) == 0
    assert echoscu(scp.bound_port, calling="INTRUDER") != 0


def test_a_study_in_one_association_is_stored_whole_and_ready_after_release(
    scp: StoreSCP, store: Store, small_study: GeneratedStudy, tmp_path: Path
) -> None:
    out = storescu(scp.bound_port, [small_study.files[0].parent])
    assert out.returncode == 0, out.stderr
    assert scp.received == {"accepted": 3}
    rows = store.study_instances(small_study.study_instance_uid)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(small_study.sop_instance_uids)
    for r in rows:
        spooled = Path(r["spool_path"])
        assert hashlib.sha256(spooled.read_bytes()).hexdigest() == r["sha256"]
        original = next(
            f for f, s in zip(small_study.files, small_study.sop_instance_uids, strict=True)
            if s == r["sop_instance_uid"]
        )  # fmt: skip
        assert _dataset_bytes(spooled) == _dataset_bytes(original)
        assert (r["source"], r["origin"]) == ("dimse", "STORESCU")
    [study] = store.query("SELECT ready_at, last_instance_at FROM studies")
    assert study["ready_at"] is not None and study["ready_at"] > study["last_instance_at"]
    assert [s["study_instance_uid"] for s in store.due_studies(3600, time.time() + 1)] == [
        small_study.study_instance_uid
    ]
    # The same study again: duplicates, answered with success, nothing stored twice.
    again = storescu(scp.bound_port, [small_study.files[0].parent])
    assert again.returncode == 0
    assert scp.received == {"accepted": 3, "duplicate": 3}
    assert len(list((store.path.parent / "spool").rglob("*.dcm"))) == 3


def test_compressed_transfer_syntaxes_are_kept_as_sent(
    scp: StoreSCP, store: Store, tmp_path: Path
) -> None:
    src = tmp_path / "compressed"
    src.mkdir()
    syntaxes = set()
    compressed = _compressed()
    for name in compressed:
        shutil.copyfile(PYDICOM_TEST_FILES / name, src / name)
        syntaxes.add(
            str(pydicom.dcmread(src / name, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        )
    for name in compressed:
        # storescu proposes uncompressed first unless told which compressed syntax to offer.
        ts = str(pydicom.dcmread(src / name, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        out = storescu(scp.bound_port, [src / name], extra=[PROPOSE[ts]])
        assert out.returncode == 0, out.stderr
    rows = store.query("SELECT transfer_syntax_uid, spool_path FROM instances")
    assert {r["transfer_syntax_uid"] for r in rows} == syntaxes
    assert len(syntaxes) >= 5 and all(UID(t).is_compressed for t in syntaxes)
    assert len(rows) == len(compressed)

    # dcmtk re-encodes the header on the way (sequence lengths); the compressed pixel data
    # must arrive untouched, under the transfer syntax it was sent in.
    def pixels(path: Path) -> tuple[str, str, bytes]:
        ds = pydicom.dcmread(path)
        return (str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID), ds.PixelData)

    spooled = sorted(pixels(Path(r["spool_path"])) for r in rows)
    assert spooled == sorted(pixels(src / name) for name in compressed)


def test_a_refused_instance_is_answered_with_a_failure_and_kept(
    scp: StoreSCP, store: Store, small_study: GeneratedStudy, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(small_study.files[0])
    ds.StudyInstanceUID = "1.2.03"  # malformed: leading zero
    bad = tmp_path / "bad"
    bad.mkdir()
    ds.save_as(bad / "bad.dcm")
    out = storescu(scp.bound_port, [bad], extra=["-v"])
    assert "cannotunderstand" in (out.stdout + out.stderr).lower()  # 0xC000
    assert scp.received == {"quarantined": 1}
    [entry] = store.quarantine_entries()
    assert (entry["reason"], entry["source"]) == ("malformed_uid", "dimse:STORESCU")
    assert Path(entry["path"]).exists()


def test_a_full_disk_is_answered_out_of_resources_and_the_association_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real 4 MB disk filling up mid-association: the images that fit are stored, the others
    answered 0xA700 (not an aborted association); once space is back, sending again completes
    the study."""
    study = generate_study(tmp_path / "src", instances=6, seed=7, rows=512, columns=512)
    with small_filesystem(tmp_path / "disk", 4 * 1024 * 1024) as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (2 * 1024 * 1024))
        own = disk / "incoming" / "dimse"  # where the agent streams C-STORE datasets
        own.mkdir(parents=True)
        monkeypatch.setattr(tempfile, "tempdir", str(own))
        store = Store(tmp_path / "agent.db")
        ingestor = Ingestor(
            store, spool_dir=disk / "spool", quarantine_dir=disk / "q", max_instance_bytes=1 << 30
        )
        scp = StoreSCP(ingestor, host="127.0.0.1", port=0, allowed_calling_aets=["STORESCU"])
        scp.start()
        try:
            out = storescu(scp.bound_port, [study.files[0].parent], extra=["-v"])
            log = out.stdout + out.stderr
            assert "aborted" not in log.lower(), log
            refused = log.count("Refused: OutOfResources")
            stored = log.count("Received Store Response (Success)")
            assert refused >= 1 and stored >= 1 and refused + stored == 6, log
            assert "Releasing Association" in log and "Release Failed" not in log
            assert scp.received == {"accepted": stored}
            assert len(list((disk / "spool").rglob("*.dcm"))) == stored
            assert [p for p in own.iterdir() if p.stat().st_size] == []  # no half dataset kept

            filler.unlink()  # IT frees space; the modality sends the study again
            again = storescu(scp.bound_port, [study.files[0].parent], extra=["-v"])
            assert "OutOfResources" not in again.stdout + again.stderr
            assert scp.received == {"accepted": 6, "duplicate": stored}
            rows = store.study_instances(study.study_instance_uid)
            assert sorted(r["sop_instance_uid"] for r in rows) == sorted(study.sop_instance_uids)
        finally:
            scp.stop()
            store.close()
