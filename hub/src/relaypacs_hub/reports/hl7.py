"""HL7 v2 ORU^R01 results over MLLP: a reporting system (RIS) sends the radiologist's report; the
hub matches it to a delivered study by Accession Number and records it like any other report.

- **Framing** (MLLP): ``0x0B`` message ``0x1C 0x0D``; one acknowledgement per message.
- **Matching**: the Accession Number is looked for in OBR-18 (placer field 1, where IHE
  Radiology puts it), then OBR-3, OBR-2, ORC-3, ORC-2; it must be one the hub recorded for a
  delivered study (read from the study's own instances).
- **Status**: OBR-25 (result status): ``P`` preliminary, ``F`` final, ``C`` corrected (amended);
  else OBX-11 of the first OBX.
- **Text**: OBX-5 of the TX, FT, ST and CE observations, in order, with HL7 escapes undone.
- **Answers**: ``AA`` when recorded; ``AE`` with the reason when the message cannot be matched
  (unknown accession number, no report text); ``AR`` when it is not an ORU^R01 or not HL7.
  Nothing is stored of a refused message, and the reason is plain words in MSA-3.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.audit import audit
from relaypacs_hub.db.models import StudyReport
from relaypacs_hub.reports.service import FeedSignal, NewReport, NoFinalReport, record_report
from relaypacs_shared.reports import ReportStatus

log = structlog.get_logger("relaypacs.hub.hl7")

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_STATUS: dict[str, ReportStatus] = {"P": "preliminary", "F": "final", "C": "amended"}
_TEXT_TYPES = frozenset({"TX", "FT", "ST", "CE", "CWE"})


class Hl7Refused(ValueError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code  # AE (application error) or AR (rejected)
        self.reason = reason


@dataclass
class OruResult:
    control_id: str
    accessions: list[str]
    status: ReportStatus
    text: str
    title: str


@dataclass
class _Message:
    segments: list[list[str]]
    component: str
    repetition: str
    escape: str
    subcomponent: str

    def first(self, name: str) -> list[str] | None:
        return next((s for s in self.segments if s and s[0] == name), None)

    def all(self, name: str) -> list[list[str]]:
        return [s for s in self.segments if s and s[0] == name]


def _parse(raw: str) -> _Message:
    lines = [line for line in raw.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line]
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        raise Hl7Refused("AR", "not an HL7 v2 message (it does not start with MSH)")
    field = lines[0][3]
    encoding = lines[0][4:8]
    chars = (encoding + "^~\\&")[:4]
    component, repetition, escape, subcomponent = chars[0], chars[1], chars[2], chars[3]
    segments = []
    for line in lines:
        parts = line.split(field)
        if parts[0] == "MSH":  # MSH-1 is the separator itself: keep field numbers as in HL7
            parts = ["MSH", field, *parts[1:]]
        segments.append(parts)
    return _Message(segments, component, repetition, escape, subcomponent)


def _field(segment: list[str] | None, number: int) -> str:
    if segment is None or number >= len(segment):
        return ""
    return segment[number]


def _unescape(value: str, msg: _Message) -> str:
    e = msg.escape
    replacements = {
        f"{e}F{e}": "|",
        f"{e}S{e}": msg.component,
        f"{e}T{e}": msg.subcomponent,
        f"{e}R{e}": msg.repetition,
        f"{e}.br{e}": "\n",
        f"{e}E{e}": e,
    }
    for old, new in replacements.items():
        value = value.replace(old, new)
    return value


def parse_oru(raw: str) -> OruResult:
    msg = _parse(raw)
    msh = msg.first("MSH")
    control_id = _field(msh, 10)
    message_type = _field(msh, 9).split(msg.component)
    if message_type[:2] != ["ORU", "R01"]:
        raise Hl7Refused("AR", f"only ORU^R01 results are taken, not {'^'.join(message_type)}")
    obr = msg.first("OBR")
    orc = msg.first("ORC")
    if obr is None:
        raise Hl7Refused("AE", "the result has no OBR segment")
    accessions: list[str] = []
    for segment, number in ((obr, 18), (obr, 3), (obr, 2), (orc, 3), (orc, 2)):
        value = _field(segment, number).split(msg.component)[0].strip()
        if value and value not in accessions:
            accessions.append(value)
    obxs = msg.all("OBX")
    code = _field(obr, 25).strip().upper() or (_field(obxs[0], 11).strip().upper() if obxs else "")
    status = _STATUS.get(code)
    if status is None:
        raise Hl7Refused("AE", f"result status {code or '(none)'} is not P, F or C")
    lines: list[str] = []
    for obx in obxs:
        if _field(obx, 2).strip().upper() not in _TEXT_TYPES:
            continue
        for repetition in _field(obx, 5).split(msg.repetition):
            value = repetition
            if _field(obx, 2).strip().upper() in ("CE", "CWE"):
                parts = value.split(msg.component)
                value = parts[1] if len(parts) > 1 else parts[0]
            lines.append(_unescape(value, msg))
    text = "\n".join(lines).strip()
    if not text:
        raise Hl7Refused("AE", "the result holds no report text (OBX TX/FT/ST)")
    service = _field(obr, 4).split(msg.component)
    title = (service[1] if len(service) > 1 and service[1] else "Radiology report").strip()
    return OruResult(control_id, accessions, status, text, title[:200])


def ack(raw: str, code: str, text: str = "") -> bytes:
    """The MLLP-framed ACK for a message (what could be read of its MSH)."""
    try:
        msh = _parse(raw).first("MSH")
    except Hl7Refused:
        msh = None
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    sender_app, sender_fac = _field(msh, 3), _field(msh, 4)
    control_id = _field(msh, 10)
    clean = text.replace("|", "/").replace("^", " ").replace("~", " ").replace("\\", "/")[:200]
    body = (
        f"MSH|^~\\&|RELAYPACS|HUB|{sender_app}|{sender_fac}|{now}||ACK^R01^ACK|"
        f"ACK{control_id[:16]}|P|2.5\rMSA|{code}|{control_id}|{clean}\r"
    )
    return START + body.encode("utf-8") + END


async def take_oru(
    sessionmaker: async_sessionmaker[AsyncSession],
    raw: str,
    *,
    signal: FeedSignal | None,
    source: str,
) -> list[str]:
    """Record the result for every study with its accession number; the study UIDs."""
    result = parse_oru(raw)
    async with sessionmaker() as session:
        studies: list[str] = []
        for accession in result.accessions:
            studies = list(
                await session.scalars(
                    select(StudyReport.study_instance_uid).where(
                        StudyReport.accession_number == accession
                    )
                )
            )
            if studies:
                break
    if not studies:
        raise Hl7Refused(
            "AE", "no delivered study has this accession number (OBR-18, OBR-3 or ORC-3)"
        )
    for study_uid in studies:
        try:
            await record_report(
                sessionmaker,
                NewReport(study_uid, "hl7", "text", result.status, result.title, result.text),
                signal=signal,
            )
        except NoFinalReport as exc:
            raise Hl7Refused("AE", "a corrected result for a study with no final report") from exc
        await audit(
            sessionmaker, "hl7", "report.received", study_uid, source=source, status=result.status
        )
    return studies


class MllpServer:
    """The hub's HL7 listener (``hl7_port``): one ACK per message, connections kept open."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        signal: FeedSignal | None,
        host: str,
        port: int,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.signal = signal
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_MESSAGE_BYTES
        )
        for sock in self._server.sockets:
            self.port = int(sock.getsockname()[1])
            break
        log.info("hl7_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "unknown"
        try:
            while True:
                try:
                    await reader.readuntil(START)
                    frame = await reader.readuntil(END)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    log.warning("hl7_message_too_large", source=source)
                    return
                raw = frame[: -len(END)].decode("utf-8", "replace")
                writer.write(await self._answer(raw, source))
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, raw: str, source: str) -> bytes:
        try:
            studies = await take_oru(self.sessionmaker, raw, signal=self.signal, source=source)
        except Hl7Refused as exc:
            log.warning("hl7_refused", code=exc.code, reason=exc.reason, source=source)
            return ack(raw, exc.code, exc.reason)
        except Exception:
            log.exception("hl7_failed", source=source)
            return ack(raw, "AE", "the hub could not record the result; send it again")
        log.info("hl7_report_recorded", studies=len(studies), source=source)
        return ack(raw, "AA")
