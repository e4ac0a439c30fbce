"""Radiology reports as DICOM objects: which objects are reports, their status, their text.

A report is a Basic/Enhanced/Comprehensive (3D)/Extensible SR, an Encapsulated PDF or an
Encapsulated CDA. Not a report: radiation dose SRs (CT scanners put one into every study), Key
Object Selection documents, CAD SRs and other SR classes that carry measurements, and a
Comprehensive SR whose document title or template says it is a dose report or a CAD result.

Status (PS3.3 C.17.2 SR Document General module):

- ``preliminary``: PreliminaryFlag PRELIMINARY, or CompletionFlag PARTIAL, or VerificationFlag
  UNVERIFIED (the radiologist has not signed it);
- ``final``: otherwise (an Encapsulated PDF or CDA carries no flags: final unless it says
  PRELIMINARY);
- ``amended``: a final document that names the documents it replaces in
  PredecessorDocumentsSequence.

Nothing here logs: reports are clinical data.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import pydicom
from pydicom.dataset import Dataset

ReportStatus = Literal["preliminary", "final", "amended"]
ReportKind = Literal["text", "sr", "pdf", "cda"]
STATUS_ORDER: dict[str, int] = {"none": 0, "preliminary": 1, "final": 2, "amended": 3}

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
EXTENSIBLE_SR = "1.2.840.10008.5.1.4.1.1.88.35"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_CDA = "1.2.840.10008.5.1.4.1.1.104.2"

SR_REPORT_CLASSES = frozenset(
    {BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR, EXTENSIBLE_SR}
)
REPORT_CLASSES = SR_REPORT_CLASSES | {ENCAPSULATED_PDF, ENCAPSULATED_CDA}

# Classes that are never reports, with the reason given when one is seen.
NOT_REPORT_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.67": "X-Ray Radiation Dose SR",
    "1.2.840.10008.5.1.4.1.1.88.68": "Radiopharmaceutical Radiation Dose SR",
    "1.2.840.10008.5.1.4.1.1.88.73": "Patient Radiation Dose SR",
    "1.2.840.10008.5.1.4.1.1.88.74": "Planned Imaging Agent Administration SR",
    "1.2.840.10008.5.1.4.1.1.88.75": "Performed Imaging Agent Administration SR",
    "1.2.840.10008.5.1.4.1.1.88.76": "Enhanced X-Ray Radiation Dose SR",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document",
    "1.2.840.10008.5.1.4.1.1.88.50": "Mammography CAD SR",
    "1.2.840.10008.5.1.4.1.1.88.65": "Chest CAD SR",
    "1.2.840.10008.5.1.4.1.1.88.69": "Colon CAD SR",
    "1.2.840.10008.5.1.4.1.1.88.40": "Procedure Log",
    "1.2.840.10008.5.1.4.1.1.88.70": "Implantation Plan SR",
    "1.2.840.10008.5.1.4.1.1.88.71": "Acquisition Context SR",
    "1.2.840.10008.5.1.4.1.1.88.72": "Simplified Adult Echo SR",
}

# Document titles (concept name codes) and templates of SRs in a report class that are not
# reports: dose reports (TID 10001 and its kin) and CAD results.
_NOT_REPORT_TITLES: dict[str, str] = {
    "113701": "radiation dose report",  # DCM X-Ray Radiation Dose Report
    "113500": "radiation dose report",  # DCM Radiopharmaceutical Radiation Dose Report
    "128000": "radiation dose report",  # DCM Patient Radiation Dose Report
    "73569-6": "radiation dose report",  # LOINC Radiation exposure and protection information
    "111036": "CAD result",  # DCM Mammography CAD Report
    "112000": "CAD result",  # DCM Chest CAD Report
    "112220": "CAD result",  # DCM Colon CAD Report
    "113000": "key object selection",  # DCM Of Interest
}
_NOT_REPORT_TEMPLATES: dict[str, str] = {
    **{t: "radiation dose report" for t in ("10001", "10011", "10021", "10030", "10040")},
    **{t: "CAD result" for t in ("4000", "4100", "4120")},
    "2010": "key object selection",
}

MAX_TEXT_CHARS = 200_000


class ReportRejected(ValueError):
    """The object cannot be taken as a report; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ParsedReport:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    kind: ReportKind
    status: ReportStatus
    title: str
    text: str
    content: bytes | None = None  # the PDF (kind "pdf")
    content_type: str | None = None
    accession_number: str | None = None
    predecessors: list[str] = field(default_factory=list)


def classify(sop_class_uid: str) -> tuple[bool | None, str]:
    """By SOP Class UID alone: True (a report class; SRs still need ``is_report_document``),
    False (never a report) or None (not a document at all), with a reason."""
    if sop_class_uid in REPORT_CLASSES:
        return True, "report class"
    if sop_class_uid in NOT_REPORT_CLASSES:
        return False, f"{NOT_REPORT_CLASSES[sop_class_uid]} is not a report"
    return None, "not a document"


def _code_value(item: Dataset) -> str:
    for keyword in ("CodeValue", "LongCodeValue", "URNCodeValue"):
        value = item.get(keyword)
        if value:
            return str(value).strip()
    return ""


def _meaning(ds: Dataset, keyword: str) -> str:
    seq = ds.get(keyword)
    if seq:
        return str(seq[0].get("CodeMeaning", "")).strip()
    return ""


def not_a_report_reason(ds: Dataset) -> str | None:
    """Why an SR of a report class is not a report (dose, CAD, key objects), or None."""
    titles = ds.get("ConceptNameCodeSequence") or []
    for item in titles:
        reason = _NOT_REPORT_TITLES.get(_code_value(item))
        if reason:
            return f"the document is a {reason} ({str(item.get('CodeMeaning', '')).strip()})"
    for item in ds.get("ContentTemplateSequence") or []:
        tid = str(item.get("TemplateIdentifier", "")).strip()
        reason = _NOT_REPORT_TEMPLATES.get(tid)
        if reason:
            return f"the document is a {reason} (template TID {tid})"
    return None


def status_of(ds: Dataset) -> ReportStatus:
    preliminary = str(ds.get("PreliminaryFlag", "")).strip().upper() == "PRELIMINARY"
    partial = str(ds.get("CompletionFlag", "")).strip().upper() == "PARTIAL"
    unverified = str(ds.get("VerificationFlag", "")).strip().upper() == "UNVERIFIED"
    if preliminary or partial or unverified:
        return "preliminary"
    return "amended" if predecessors_of(ds) else "final"


def predecessors_of(ds: Dataset) -> list[str]:
    """SOP Instance UIDs named in PredecessorDocumentsSequence (study/series/instance levels)."""
    found: list[str] = []
    for study in ds.get("PredecessorDocumentsSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            for sop in series.get("ReferencedSOPSequence") or []:
                uid = str(sop.get("ReferencedSOPInstanceUID", "")).strip()
                if uid:
                    found.append(uid)
    return found


def _value_text(item: Dataset) -> str:
    vtype = str(item.get("ValueType", "")).upper()
    if vtype == "TEXT":
        return str(item.get("TextValue", "")).strip()
    if vtype == "CODE":
        return _meaning(item, "ConceptCodeSequence")
    if vtype == "NUM":
        for mv in item.get("MeasuredValueSequence") or []:
            unit = _meaning(mv, "MeasurementUnitsCodeSequence")
            value = str(mv.get("NumericValue", "")).strip()
            return f"{value} {unit}".strip() if unit and unit != "no units" else value
        return ""
    if vtype == "PNAME":
        return str(item.get("PersonName", "")).replace("^", " ").strip()
    if vtype == "DATE":
        return str(item.get("Date", ""))
    if vtype == "DATETIME":
        return str(item.get("DateTime", ""))
    if vtype == "TIME":
        return str(item.get("Time", ""))
    if vtype == "UIDREF":
        return str(item.get("UID", ""))
    return ""


def render_sr(ds: Dataset) -> str:
    """The SR content tree as readable text: headings for containers, "Name: value" lines for
    the rest, indented by depth. Image references and spatial coordinates are left out."""
    lines: list[str] = []

    def walk(items: Iterable[Dataset], depth: int, parent: str = "") -> None:
        for item in items:
            vtype = str(item.get("ValueType", "")).upper()
            name = _meaning(item, "ConceptNameCodeSequence")
            if vtype != "CONTAINER" and name == parent:
                name = ""  # "Findings" / "Findings: ..." reads as one heading
            pad = "  " * depth
            if vtype == "CONTAINER":
                if name:
                    lines.append(f"{pad}{name}")
                walk(item.get("ContentSequence") or [], depth + 1, name)
                continue
            value = _value_text(item)
            if value:
                if vtype == "TEXT" and "\n" in value:
                    if name:
                        lines.append(f"{pad}{name}:")
                        pad += "  "
                    lines.extend(f"{pad}{line}".rstrip() for line in value.splitlines())
                else:
                    lines.append(f"{pad}{name}: {value}" if name else f"{pad}{value}")
            walk(item.get("ContentSequence") or [], depth + 1)

    walk(ds.get("ContentSequence") or [], 0)
    text = "\n".join(lines).strip()
    return text[:MAX_TEXT_CHARS]


def _document_bytes(ds: Dataset) -> bytes:
    raw = ds.get("EncapsulatedDocument")
    if raw is None:
        raise ReportRejected("the encapsulated document holds no document")
    data = bytes(raw)
    length = ds.get("EncapsulatedDocumentLength")
    if length is not None and 0 < int(length) <= len(data):
        data = data[: int(length)]
    return data


def check_pdf(data: bytes) -> bytes:
    """The PDF itself, its even-length padding removed; refuses what is not a PDF."""
    if not data.lstrip(b"\x00\t\r\n ")[:5] == b"%PDF-":
        raise ReportRejected("the document is not a PDF (it does not start with %PDF-)")
    end = data.rfind(b"%%EOF")
    return data[: end + 5] + b"\n" if end >= 0 else data


def cda_text(data: bytes) -> str:
    """Readable text of a CDA document: the text of its sections."""
    try:
        # Python's expat fetches no external entities and (expat >= 2.4) caps entity
        # expansion, so the XML attacks S314 warns of do not apply to this parser.
        root = ET.fromstring(data.rstrip(b"\x00 "))  # noqa: S314
    except ET.ParseError as exc:
        raise ReportRejected(f"the CDA document is not well-formed XML: {exc}") from exc
    chunks = [re.sub(r"\s+", " ", t).strip() for t in root.itertext()]
    return "\n".join(c for c in chunks if c)[:MAX_TEXT_CHARS]


def _str(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def parse_report(data: bytes) -> ParsedReport:
    """Read a DICOM report object (SR, Encapsulated PDF or CDA).

    Raises ``ReportRejected`` with the reason when the bytes are not DICOM, not a report class,
    or a dose/CAD/key-object document.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        sop_class = _str(ds, "SOPClassUID")
        sop_uid = _str(ds, "SOPInstanceUID")
        study_uid = _str(ds, "StudyInstanceUID")
    except Exception as exc:  # pydicom raises many kinds on garbage
        raise ReportRejected(f"the object is not readable DICOM: {type(exc).__name__}") from exc
    if not sop_class or not sop_uid or not study_uid:
        raise ReportRejected("the object lacks its SOP Class, SOP Instance or Study UID")
    verdict, reason = classify(sop_class)
    if verdict is not True:
        raise ReportRejected(reason if verdict is False else "the object is not a report")
    try:
        return _parse_dataset(ds, sop_class, sop_uid, study_uid)
    except ReportRejected:
        raise
    except Exception as exc:
        raise ReportRejected(
            "the report is malformed: its content could not be read (cut short or damaged); "
            f"send it again from the reporting system ({type(exc).__name__})"
        ) from exc


def _parse_dataset(ds: Dataset, sop_class: str, sop_uid: str, study_uid: str) -> ParsedReport:
    common = {
        "sop_instance_uid": sop_uid,
        "study_instance_uid": study_uid,
        "series_instance_uid": _str(ds, "SeriesInstanceUID"),
        "sop_class_uid": sop_class,
        "accession_number": _str(ds, "AccessionNumber") or None,
    }
    if sop_class in SR_REPORT_CLASSES:
        reason = not_a_report_reason(ds)
        if reason:
            raise ReportRejected(reason)
        text = render_sr(ds)
        if not text:
            raise ReportRejected("the structured report holds no readable content")
        return ParsedReport(
            kind="sr",
            status=status_of(ds),
            title=_meaning(ds, "ConceptNameCodeSequence") or "Report",
            text=text,
            predecessors=predecessors_of(ds),
            **common,  # type: ignore[arg-type]
        )
    document = _document_bytes(ds)
    preliminary = _str(ds, "PreliminaryFlag").upper() == "PRELIMINARY"
    predecessors = predecessors_of(ds)
    status: ReportStatus = (
        "preliminary" if preliminary else ("amended" if predecessors else "final")
    )
    title = _str(ds, "DocumentTitle") or "Report"
    if sop_class == ENCAPSULATED_PDF:
        return ParsedReport(
            kind="pdf",
            status=status,
            title=title,
            text="",
            content=check_pdf(document),
            content_type="application/pdf",
            predecessors=predecessors,
            **common,  # type: ignore[arg-type]
        )
    return ParsedReport(
        kind="cda",
        status=status,
        title=title,
        text=cda_text(document),
        predecessors=predecessors,
        **common,  # type: ignore[arg-type]
    )


def later_status(current: str, new: str) -> str:
    """The study's report status after a new report: it never goes back (a late preliminary
    after a final keeps the study final)."""
    return new if STATUS_ORDER.get(new, 0) >= STATUS_ORDER.get(current, 0) else current
