"""Reports into the facility's own PACS: with ``report_store_pacs`` set, each report the agent
receives from the hub is also stored, by C-STORE, into a PACS at the clinic, so the clinic's own
viewers show it next to the images.

The agent writes the report as a DICOM object of the study it reports on: a Basic Text SR for a
text or SR report, an Encapsulated PDF for a PDF. Patient and study details come from one of the
study's own instances this agent holds (the hub keeps no patient data), so the clinic's PACS
files the report under the right patient; a report for a study whose images this agent does not
hold is skipped with that reason. Each report gets a stable SOP Instance UID (from the study and
the hub's report id): sending it again replaces, never duplicates. An amendment names the
report it amends (Predecessor Documents Sequence). A PACS that is down or busy is tried again
with a growing wait; a PACS that refuses the object (a status that is not success or warning) is
recorded as refused with its status, in words.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from relaypacs_agent.store.db import Store
from relaypacs_shared.dicom_status import (
    SUCCESS,
    WARNING_STATUSES,
    describe_failure_reason,
    out_of_resources,
)

log = structlog.get_logger("relaypacs.agent.report_store")

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
# Copied from the study's own instance: who the report is about and which study it reports on.
STUDY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
TYPE2_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class PacsAddress:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> PacsAddress:
        """``AE_TITLE@host:port``."""
        aet, at, rest = value.partition("@")
        host, colon, port = rest.rpartition(":")
        if not (at and colon and aet.strip() and host and port.isdigit()):
            raise ValueError(f"a PACS address is AE_TITLE@host:port, not {value!r}")
        if len(aet.strip()) > 16:
            raise ValueError(f"an AE title has at most 16 characters: {aet!r}")
        return cls(aet.strip(), host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def report_sop_uid(study_uid: str, report_id: int) -> str:
    return str(generate_uid(entropy_srcs=["relaypacs-report", study_uid, str(report_id)]))


def build_report_object(
    report: dict[str, Any],
    study: Dataset,
    *,
    document: bytes | None = None,
    predecessor: str | None = None,
) -> Dataset:
    """The report as a DICOM object of ``study`` (a header of one of its instances)."""
    study_uid = str(study.StudyInstanceUID)
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    pdf = document is not None
    ds = Dataset()
    for keyword in STUDY_ATTRIBUTES:
        if keyword in study:
            setattr(ds, keyword, study.data_element(keyword).value)  # type: ignore[union-attr]
    for keyword in TYPE2_ATTRIBUTES:  # present, empty when the study's instance lacks them
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.SOPClassUID = ENCAPSULATED_PDF if pdf else BASIC_TEXT_SR
    ds.SOPInstanceUID = report_sop_uid(study_uid, int(report["id"]))
    ds.SeriesInstanceUID = str(generate_uid(entropy_srcs=["relaypacs-report-series", study_uid]))
    ds.Modality = "DOC" if pdf else "SR"
    ds.SeriesNumber = 9901
    ds.InstanceNumber = int(report["id"]) % 100_000 or 1
    ds.SeriesDescription = "Report (RelayPACS)"
    ds.Manufacturer = "RelayPACS"
    ds.ContentDate, ds.ContentTime = now[:8], now[8:]
    ds.InstanceCreationDate, ds.InstanceCreationTime = now[:8], now[8:]
    ds.SpecificCharacterSet = "ISO_IR 192"
    title = str(report.get("title") or "Radiology report")[:64]
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "18748-4", "LN"
    concept.CodeMeaning = "Diagnostic imaging report"
    status = str(report["status"])
    if pdf:
        assert document is not None
        ds.DocumentTitle = title
        ds.ConceptNameCodeSequence = Sequence([concept])
        ds.BurnedInAnnotation = "YES"
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
        ds.EncapsulatedDocumentLength = len(document)
        ds.AcquisitionDateTime = now
    else:
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.ConceptNameCodeSequence = Sequence([concept])
        final = status in ("final", "amended")
        ds.CompletionFlag = "COMPLETE" if final else "PARTIAL"
        ds.VerificationFlag = "VERIFIED" if final else "UNVERIFIED"
        ds.PreliminaryFlag = "FINAL" if final else "PRELIMINARY"
        if final:
            observer = Dataset()
            observer.VerifyingObserverName = "Relayed^RelayPACS"
            observer.VerifyingOrganization = "RelayPACS report relay"
            observer.VerificationDateTime = now
            observer.VerifyingObserverIdentificationCodeSequence = Sequence()
            ds.VerifyingObserverSequence = Sequence([observer])
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        findings = Dataset()
        findings.CodeValue, findings.CodingSchemeDesignator = "121071", "DCM"
        findings.CodeMeaning = "Finding"
        text.ConceptNameCodeSequence = Sequence([findings])
        text.TextValue = str(report.get("text") or "")
        ds.ContentSequence = Sequence([text])
        ds.PerformedProcedureCodeSequence = Sequence()
        ds.ReferencedRequestSequence = Sequence()
    if predecessor is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = predecessor
        series = Dataset()
        series.SeriesInstanceUID = ds.SeriesInstanceUID
        series.ReferencedSOPSequence = Sequence([ref])
        item = Dataset()
        item.StudyInstanceUID = study_uid
        item.ReferencedSeriesSequence = Sequence([series])
        ds.PredecessorDocumentsSequence = Sequence([item])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


class StoreRefused(Exception):
    """The PACS answered the C-STORE with a failure status: sending again will not help."""


class PacsUnavailable(Exception):
    """No association, or no answer: try again later."""


def c_store(address: PacsAddress, calling_aet: str, ds: Dataset, timeout: float = 30) -> int:
    """Store one object; the C-STORE status (success or warning), or an exception in words."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate(address.host, address.port, ae_title=address.ae_title)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "did not answer"
        raise PacsUnavailable(f"the clinic PACS {address} {why}")
    try:
        answer = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if "Status" not in answer:
        raise PacsUnavailable(f"the clinic PACS {address} gave no answer to the store")
    code = int(answer.Status)
    if code == SUCCESS or code in WARNING_STATUSES:
        return code
    if out_of_resources(code):  # busy now, perhaps not later
        raise PacsUnavailable(f"the clinic PACS {address}: {describe_failure_reason(code)}")
    raise StoreRefused(
        f"the clinic PACS {address} refused the report: {describe_failure_reason(code)}"
    )


class ReportStorer:
    """Stores received reports into the facility's PACS (a thread of the agent)."""

    def __init__(
        self,
        store: Store,
        reports_folder: Path,
        address: PacsAddress,
        calling_aet: str,
        *,
        retry_max: float = 3600.0,
        interval: float = 5.0,
    ) -> None:
        self.store = store
        self.reports_folder = reports_folder
        self.address = address
        self.calling_aet = calling_aet
        self.retry_max = retry_max
        self.interval = interval
        self.last_error: str | None = None

    def run_once(self, now: float | None = None) -> int:
        """Try every report that is due; returns how many were stored."""
        stored = 0
        for row in self.store.reports_to_store(time.time() if now is None else now):
            try:
                stored += self._store_one(row)
            except Exception as exc:  # e.g. an unreadable image header: this report only
                log.exception("report_pacs_failed", report_id=row["id"])
                self._retry(dict(row), f"{type(exc).__name__}: {exc}"[:300])
        return stored

    def _retry(self, report: dict[str, Any], error: str) -> float:
        attempts = int(report.get("store_attempts") or 0) + 1
        wait = float(min(self.retry_max, 5.0 * 2 ** min(attempts, 12)))
        self.last_error = error
        study_uid = str(report["study_instance_uid"])
        self.store.record_report_store(
            int(report["id"]),
            study_uid,
            report_sop_uid(study_uid, int(report["id"])),
            "retry",
            error=error,
            next_try_at=time.time() + wait,
        )
        return wait

    def _store_one(self, row: Any) -> int:
        report = dict(row)
        study_uid = str(report["study_instance_uid"])
        report_id = int(report["id"])
        sop_uid = report_sop_uid(study_uid, report_id)
        sample = self.store.study_sample_file(study_uid)
        if sample is None:
            self.store.record_report_store(
                report_id,
                study_uid,
                sop_uid,
                "skipped",
                error="the study's images are not at this agent, so the patient it belongs to "
                "is not known here",
            )
            return 0
        document = None
        if report.get("document"):
            document = (self.reports_folder / str(report["document"])).read_bytes()
        study = pydicom.dcmread(sample, stop_before_pixels=True)
        ds = build_report_object(
            report,
            study,
            document=document,
            predecessor=(
                self.store.stored_report_before(study_uid, report_id)
                if report["status"] == "amended"
                else None
            ),
        )
        try:
            c_store(self.address, self.calling_aet, ds)
        except StoreRefused as exc:
            self.store.record_report_store(report_id, study_uid, sop_uid, "refused", error=str(exc))
            log.warning("report_pacs_refused", report_id=report_id, error=str(exc))
            return 0
        except (PacsUnavailable, OSError, RuntimeError) as exc:
            wait = self._retry(report, str(exc))
            log.warning("report_pacs_unavailable", report_id=report_id, retry_in=wait)
            return 0
        self.last_error = None
        self.store.record_report_store(report_id, study_uid, sop_uid, "stored")
        log.info("report_pacs_stored", report_id=report_id, pacs=self.address.ae_title)
        return 1

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # the catalogue itself failed: try again at the next turn
                log.exception("report_pacs_round_failed")
            stop.wait(self.interval)
