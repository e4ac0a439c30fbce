"""Synthetic report objects for tests, the demo and benchmarks: a text SR (Basic Text or
Comprehensive), an Encapsulated PDF and a CT radiation dose SR, each for a given study.

They carry what an archive's report would: the study's UIDs and accession number, SR Document
General flags (completion, verification, preliminary) and, for an amendment, the predecessor in
PredecessorDocumentsSequence.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _base(
    sop_class: str, study_uid: str, accession: str, modality: str, series_number: int
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.AccessionNumber = accession
    ds.PatientName = "REPORT^TEST"
    ds.PatientID = "RPT-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20261205"
    ds.StudyTime = "101500"
    ds.ContentDate = "20261205"
    ds.ContentTime = "103000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Manufacturer = "RelayPACS test kit"
    return ds


def _predecessor(study_uid: str, series_uid: str, sop_class: str, sop_uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = sop_uid
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedSOPSequence = [ref]
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = [series]
    return study


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def text_sr(
    study_uid: str,
    *,
    findings: str,
    impression: str = "",
    accession: str = "",
    status: str = "final",
    predecessor: tuple[str, str] | None = None,
    comprehensive: bool = False,
) -> bytes:
    """A radiology report as an SR: ``status`` preliminary or final; ``predecessor`` (series UID,
    SOP Instance UID) of the report it amends."""
    sop_class = COMPREHENSIVE_SR if comprehensive else BASIC_TEXT_SR
    ds = _base(sop_class, study_uid, accession, "SR", 900)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.CompletionFlag = "PARTIAL" if status == "preliminary" else "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED" if status == "preliminary" else "VERIFIED"
    ds.PreliminaryFlag = "PRELIMINARY" if status == "preliminary" else "FINAL"
    if status != "preliminary":
        observer = Dataset()
        observer.VerifyingObserverName = "Reader^Rita"
        observer.VerifyingOrganization = "Central Radiology"
        observer.VerificationDateTime = "20261205103000"
        ds.VerifyingObserverSequence = [observer]
    if predecessor is not None:
        ds.PredecessorDocumentsSequence = [
            _predecessor(study_uid, predecessor[0], sop_class, predecessor[1])
        ]
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.ContentTemplateSequence = []
    sections: list[Dataset] = []
    for heading_code, heading, value in (
        ("121070", "Findings", findings),
        ("121072", "Impressions", impression),
    ):
        if not value:
            continue
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        text.ConceptNameCodeSequence = [_code(heading_code, "DCM", heading)]
        text.TextValue = value
        section = Dataset()
        section.RelationshipType = "CONTAINS"
        section.ValueType = "CONTAINER"
        section.ContinuityOfContent = "SEPARATE"
        section.ConceptNameCodeSequence = [_code(heading_code, "DCM", heading)]
        section.ContentSequence = [text]
        sections.append(section)
    ds.ContentSequence = sections
    return _bytes(ds)


def dose_sr(study_uid: str, *, accession: str = "", comprehensive: bool = False) -> bytes:
    """A CT radiation dose report (TID 10011), as a scanner writes into every CT study: as an
    X-Ray Radiation Dose SR, or (older scanners) as a Comprehensive SR with the dose title."""
    ds = _base(COMPREHENSIVE_SR if comprehensive else XRAY_DOSE_SR, study_uid, accession, "SR", 997)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("113701", "DCM", "X-Ray Radiation Dose Report")]
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "10011"
    ds.ContentTemplateSequence = [template]
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    num = Dataset()
    num.RelationshipType = "CONTAINS"
    num.ValueType = "NUM"
    num.ConceptNameCodeSequence = [_code("113813", "DCM", "CT Dose Length Product Total")]
    measured = Dataset()
    measured.NumericValue = "812.4"
    measured.MeasurementUnitsCodeSequence = [_code("mGy.cm", "UCUM", "mGy.cm")]
    num.MeasuredValueSequence = [measured]
    ds.ContentSequence = [num]
    return _bytes(ds)


def minimal_pdf(lines: Sequence[str]) -> bytes:
    """A small valid one-page PDF showing ``lines`` (Helvetica), with a correct xref table."""
    text_ops = ["BT", "/F1 12 Tf", "72 760 Td", "14 TL"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        text_ops.append(f"({escaped}) Tj T*")
    text_ops.append("ET")
    stream = "\n".join(text_ops).encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def encapsulated_pdf(
    study_uid: str,
    pdf: bytes,
    *,
    accession: str = "",
    title: str = "Radiology report",
    preliminary: bool = False,
) -> bytes:
    """An Encapsulated PDF IOD holding ``pdf`` (any bytes: a test may wrap what is not a PDF)."""
    ds = _base(ENCAPSULATED_PDF, study_uid, accession, "DOC", 901)
    ds.ConversionType = "WSD"
    ds.DocumentTitle = title
    ds.BurnedInAnnotation = "YES"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.AcquisitionDateTime = "20261205103000"
    if preliminary:
        ds.PreliminaryFlag = "PRELIMINARY"
    body = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocument = body
    ds.EncapsulatedDocumentLength = len(pdf)
    return _bytes(ds)
