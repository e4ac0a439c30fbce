"""Reports into the clinic's own PACS: the agent stores each report it receives by C-STORE into
a real DICOM peer (dcmtk's storescp): a text report as a Basic Text SR, a PDF as an Encapsulated
PDF, filed under the patient of the study's own images; an amendment names what it amends; a
second round sends nothing again; a PACS that is down is tried again later; a report for a study
whose images the agent does not hold is skipped with the reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.report_store import PacsAddress, ReportStorer, report_sop_uid
from relaypacs_agent.reports import ReportInbox
from relaypacs_agent.status import read_status
from relaypacs_agent.store.db import Store
from relaypacs_dev.generate import GeneratedStudy, generate_study
from relaypacs_dev.reports import minimal_pdf
from relaypacs_shared.reports import parse_report
from tests.support.storescp import StoreSCP, storescp_available

pytestmark = pytest.mark.integration


@pytest.fixture
def pacs() -> Any:
    if not storescp_available():
        pytest.skip("needs dcmtk's storescp (make system-deps)")
    with StoreSCP(aet="CLINICPACS") as scp:
        yield scp


def _report(report_id: int, study_uid: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": report_id,
        "study_instance_uid": study_uid,
        "status": status,
        "kind": extra.pop("kind", "text"),
        "title": "CT head",
        "text": extra.pop("text", ""),
        "received_at": "2026-12-06T03:00:00Z",
        **extra,
    }


def _received(scp: StoreSCP) -> dict[str, pydicom.Dataset]:
    out = {}
    for path in scp.out_dir.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path)
            out[str(ds.SOPInstanceUID)] = ds
    return out


def _spooled(ingestor: Ingestor, tmp_path: Path) -> tuple[GeneratedStudy, pydicom.Dataset]:
    """A study taken in (its files move into the spool), and the header of its first file."""
    study = generate_study(tmp_path / "ct", instances=2, rows=16, columns=16, seed=77)
    header = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    for f in study.files:
        assert ingestor.ingest(f).outcome == "accepted"
    return study, header


def test_reports_are_stored_into_the_clinic_pacs_under_the_study_patient(
    pacs: StoreSCP, store: Store, ingestor: Ingestor, tmp_path: Path
) -> None:
    study, original = _spooled(ingestor, tmp_path)
    uid = study.study_instance_uid
    inbox = ReportInbox(store, tmp_path / "reports")
    pdf = minimal_pdf(["CT head: no acute abnormality."])
    inbox.take(1, _report(11, uid, "preliminary", text="Preliminary: no bleed."), None)
    inbox.take(2, _report(12, uid, "final", text="Final: no acute abnormality."), None)
    inbox.take(3, _report(13, uid, "final", kind="pdf"), inbox.write_document(13, pdf))
    storer = ReportStorer(
        store, tmp_path / "reports", PacsAddress.parse(f"CLINICPACS@127.0.0.1:{pacs.port}"), "RP"
    )
    assert storer.run_once() == 3
    got = _received(pacs)
    assert len(got) == 3
    prelim, final = got[report_sop_uid(uid, 11)], got[report_sop_uid(uid, 12)]
    for ds in got.values():
        assert ds.StudyInstanceUID == uid
        assert ds.PatientName == original.PatientName and ds.PatientID == original.PatientID
        assert ds.AccessionNumber == original.AccessionNumber
        assert ds.SeriesInstanceUID != original.SeriesInstanceUID  # a series of its own
    assert prelim.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"
    assert prelim.ContentSequence[0].TextValue == "Preliminary: no bleed."
    assert (prelim.CompletionFlag, prelim.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    assert (final.CompletionFlag, final.VerificationFlag) == ("COMPLETE", "VERIFIED")
    # What the clinic PACS holds reads back, with RelayPACS's own report reader, as it was sent.
    assert parse_report(_bytes(final)).status == "final"
    assert parse_report(_bytes(prelim)).status == "preliminary"
    doc = got[report_sop_uid(uid, 13)]
    assert doc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert doc.EncapsulatedDocument[: len(pdf)] == pdf and doc.EncapsulatedDocumentLength == len(
        pdf
    )
    assert parse_report(_bytes(doc)).content == pdf

    # Nothing is sent twice; an amendment names the report it amends.
    assert storer.run_once() == 0
    inbox.take(4, _report(14, uid, "amended", text="Amended: small left frontal contusion."), None)
    assert storer.run_once() == 1
    amended = _received(pacs)[report_sop_uid(uid, 14)]
    ref = amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == report_sop_uid(uid, 13)
    parsed = parse_report(_bytes(amended))
    assert parsed.status == "amended" and parsed.predecessors == [report_sop_uid(uid, 13)]
    assert len(list(pacs.out_dir.rglob("*.*"))) == 4
    state = store.report_store_state(14)
    assert state is not None and state["state"] == "stored" and state["attempts"] == 1


def test_a_pacs_that_is_down_is_tried_again_and_an_unknown_study_is_skipped(
    pacs: StoreSCP, store: Store, ingestor: Ingestor, tmp_path: Path
) -> None:
    study, _ = _spooled(ingestor, tmp_path)
    uid = study.study_instance_uid
    inbox = ReportInbox(store, tmp_path / "reports")
    inbox.take(1, _report(21, uid, "final", text="Normal."), None)
    inbox.take(2, _report(22, "1.2.826.0.1.3680043.9.4242", "final", text="Elsewhere."), None)
    storer = ReportStorer(
        store, tmp_path / "reports", PacsAddress.parse(f"CLINICPACS@127.0.0.1:{pacs.port}"), "RP"
    )
    pacs.stop()
    assert storer.run_once() == 0
    down = store.report_store_state(21)
    assert down is not None and down["state"] == "retry"
    assert f"the clinic PACS CLINICPACS@127.0.0.1:{pacs.port} did not answer" in down["last_error"]
    assert down["next_try_at"] > time.time()
    shown = read_status(store.path)["reports_to_pacs"]
    assert shown["by_state"] == {"retry": 1, "skipped": 1}
    assert "did not answer" in shown["last_error"]
    skipped = store.report_store_state(22)
    assert skipped is not None and skipped["state"] == "skipped"
    assert "images are not at this agent" in skipped["last_error"]
    assert storer.run_once() == 0  # not due yet
    pacs.start()
    assert storer.run_once(now=time.time() + 3600) == 1
    assert list(_received(pacs)) == [report_sop_uid(uid, 21)]
    again = store.report_store_state(21)
    assert again is not None and again["state"] == "stored" and again["attempts"] == 2
    assert store.report_store_state(22)["state"] == "skipped"  # type: ignore[index]
    # What `relaypacs-agent status` shows IT.
    shown = read_status(store.path)["reports_to_pacs"]
    assert shown["by_state"] == {"stored": 1, "skipped": 1}


def test_the_pacs_address_is_checked_in_words() -> None:
    assert str(PacsAddress.parse("CLINIC_PACS@10.0.0.5:104")) == "CLINIC_PACS@10.0.0.5:104"
    for bad in ("10.0.0.5:104", "PACS@10.0.0.5", "@h:104", "A" * 17 + "@h:104", "P@h:port"):
        with pytest.raises(ValueError, match="AE"):
            PacsAddress.parse(bad)


def _bytes(ds: pydicom.Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
