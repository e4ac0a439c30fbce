"""Header-only DICOM validation: is this file an instance RelayPACS can accept and relay?

Rules, each with one stable reason code (``DicomValidationError.reason``):

- ``empty``            zero-byte file
- ``too_large``        larger than the configured limit
- ``not_dicom``        no ``DICM`` marker after the 128-byte preamble (PS3.10 7.1)
- ``unreadable``       the File Meta Information or the header cannot be parsed
- ``truncated``        an element's declared length runs past the end of the file, or the file
                       stops inside an element (PS3.5 7.1): typical of an interrupted copy
- ``too_deep``         sequences nested deeper than the limit
- ``missing_uid``      SOP Class, SOP Instance, Study or Series Instance UID absent or empty
- ``malformed_uid``    a UID that breaks PS3.5 9.1 (digits and dots, <= 64 chars, no leading zeros)
- ``unknown_transfer_syntax``  a transfer syntax UID this build cannot decode even the header of
- ``pixel_data_mismatch``  the transfer syntax says compressed (encapsulated) but the Pixel Data
                       is stored native, or the other way round: a PACS or viewer would fail on it

A MediaStorageSOPInstanceUID that differs from the SOPInstanceUID is a warning, not a refusal.

A dataset stored without its Part 10 header (no preamble, no ``DICM``, no File Meta Information),
as old exports and some RT planning systems write them, is recognised by
:func:`raw_dataset_syntax` and given a header by :func:`wrap_raw_dataset`; the wrapped bytes are
then validated like any file.

Pixel data is never decoded: the header is parsed with pydicom and the rest of the file is walked
element by element (lengths only), so a 2 GB multi-frame costs a few seeks, not 2 GB of memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from relaypacs_shared.errors import DicomValidationError

DEFAULT_MAX_INSTANCE_BYTES = 4 * 1024**3
DEFAULT_MAX_SEQUENCE_DEPTH = 16

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# PS3.5 7.1.2: these explicit VRs carry 2 reserved bytes and a 32-bit length.
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM = (0xFFFE, 0xE000)
_ITEM_DELIM = (0xFFFE, 0xE00D)
_SEQ_DELIM = (0xFFFE, 0xE0DD)
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}


@dataclass(frozen=True)
class InstanceInfo:
    """What RelayPACS records of an accepted instance. No patient-identifying data."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    size: int
    sha256: str
    warnings: tuple[str, ...] = ()
    # Study-level facts for the dashboard's lists and analytics (never logged): Study Date as
    # YYYYMMDD, Study Description, Accession Number; empty when absent or unreadable.
    study_date: str = ""
    study_description: str = ""
    accession_number: str = ""


def _text(ds: Any, name: str, limit: int) -> str:
    """An optional text element, stripped and cut to ``limit``; empty if absent or unreadable."""
    try:
        value = ds.get(name)
    except Exception:  # pydicom raises lazily on a malformed value
        return ""
    return str(value or "").strip("\x00 ")[:limit]


def check_uid(value: str, name: str) -> str:
    """Return the UID stripped of its padding, or raise ``malformed_uid`` (PS3.5 9.1)."""
    uid = value.rstrip("\x00 ")
    if len(uid) > 64 or not _UID_RE.match(uid):
        raise DicomValidationError("malformed_uid", f"{name} is not a valid UID: {uid[:80]!r}")
    return uid


def sha256_file(path: Path, chunk: int = 1024 * 1024) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def precheck_file(path: Path, *, max_bytes: int = DEFAULT_MAX_INSTANCE_BYTES) -> int:
    """The checks that need no parsing (size, ``DICM`` marker); returns the size.

    Run before the bytes are copied anywhere, so that an empty, huge or non-DICOM file costs
    one small read. ``validate_file`` repeats them; they are cheap.
    """
    size = path.stat().st_size
    if size == 0:
        raise DicomValidationError("empty", "the file is empty (0 bytes)")
    if size > max_bytes:
        raise DicomValidationError(
            "too_large", f"the file is {size} bytes, above the {max_bytes}-byte limit"
        )
    with path.open("rb") as f:
        f.seek(128)
        if f.read(4) != b"DICM":
            raise DicomValidationError(
                "not_dicom", "not a DICOM file: no 'DICM' marker after the 128-byte preamble"
            )
    return size


# Where RelayPACS writes File Meta Information itself (a raw dataset it wraps).
IMPLEMENTATION_CLASS_UID = "2.25.14526045365208616717168138693470903751"
IMPLEMENTATION_VERSION_NAME = "RELAYPACS"
_EXPLICIT_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
} | _LONG_VRS  # fmt: skip


def raw_dataset_syntax(path: Path) -> UID | None:
    """The transfer syntax of a dataset stored without its Part 10 header, or None.

    Such a file starts directly with its first element, in group 0008 (the SOP Common module
    opens every composite instance): Explicit VR Little Endian if a VR follows the tag, else
    Implicit VR Little Endian with a length that fits in the file. Big endian raw datasets are
    retired (PS3.5 A.3) and not recognised.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if len(head) < 12:
        return None
    group, _element = struct.unpack("<HH", head[:4])
    if group != 0x0008:
        return None
    vr = head[4:6]
    if vr in _EXPLICIT_VRS:
        if vr in _LONG_VRS:
            length = struct.unpack("<I", head[8:12])[0]
            return ExplicitVRLittleEndian if head[6:8] == b"\0\0" and length < size else None
        return ExplicitVRLittleEndian
    length = struct.unpack("<I", head[4:8])[0]
    return ImplicitVRLittleEndian if length < size else None


def wrap_raw_dataset(src: Path, dest: Path, ts: UID) -> tuple[str, str] | None:
    """Write ``src`` (a raw dataset in ``ts``) to ``dest`` behind a preamble, ``DICM`` and File
    Meta Information naming its SOP Class and Instance; fsync. Returns (SHA-256 of ``dest``,
    SHA-256 of ``src``), or None if the dataset has no SOP Class or Instance UID to name
    (nothing is written then). The dataset's own bytes are copied unchanged."""
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_file_meta_info

    with src.open("rb") as f:
        head = f.read(64 * 1024)
    try:
        ds = read_dataset(
            io.BytesIO(head), ts.is_implicit_VR, True, stop_when=lambda tag, *_: tag > 0x00080018
        )
        sop_class = str(ds.get("SOPClassUID", "") or "").rstrip("\x00 ")
        sop_instance = str(ds.get("SOPInstanceUID", "") or "").rstrip("\x00 ")
    except Exception:
        return None
    if not sop_class or not sop_instance:
        return None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    header = DicomBytesIO()
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=True)
    out_hash, in_hash = hashlib.sha256(), hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with src.open("rb") as fin, dest.open("wb") as fout:
            fout.write(header.getvalue())
            out_hash.update(header.getvalue())
            while block := fin.read(1024 * 1024):
                in_hash.update(block)
                out_hash.update(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return out_hash.hexdigest(), in_hash.hexdigest()


def has_dicm_marker(path: Path) -> bool:
    """Whether the file carries the PS3.10 marker: a DICOM file, sound or not."""
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def validate_file(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
    max_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
    sha256: str | None = None,
) -> InstanceInfo:
    """Validate one file and describe it, or raise ``DicomValidationError`` with one reason."""
    size = precheck_file(path, max_bytes=max_bytes)
    with path.open("rb") as f:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            dataset_start = _dataset_start(f)
        except RecursionError as exc:
            raise DicomValidationError(
                "too_deep", "sequences are nested too deeply to parse safely"
            ) from exc
        except InvalidDicomError as exc:
            raise DicomValidationError(
                "unreadable", f"the DICOM header is unreadable: {exc}"
            ) from exc
        except (EOFError, struct.error, BytesLengthException) as exc:
            raise DicomValidationError(
                "truncated", f"the file ends inside its header: {type(exc).__name__}: {exc}"
            ) from exc
        except Exception as exc:  # pydicom's many ways to fail on garbage: refuse, never crash
            raise DicomValidationError(
                "unreadable", f"the DICOM header is unreadable: {type(exc).__name__}: {exc}"
            ) from exc
        meta = ds.file_meta
        ts_raw = str(meta.get("TransferSyntaxUID", "") or "")
        if not ts_raw:
            raise DicomValidationError(
                "unreadable", "the File Meta Information has no TransferSyntaxUID"
            )
        ts = UID(check_uid(ts_raw, "TransferSyntaxUID"))
        if not ts.is_transfer_syntax:
            raise DicomValidationError(
                "unknown_transfer_syntax",
                f"unknown transfer syntax {ts!s}: the header cannot be read",
            )
        if ts != DeflatedExplicitVRLittleEndian:
            walker = _walk_structure(f, dataset_start, size, ts, max_depth)
            # Only Rows/Columns mark an image here: header-only instances of image SOP classes
            # exist (archives accept them), and a cut before the Image Pixel module cannot be
            # told apart from one; the hub's hash check still catches any transfer damage.
            if "Rows" in ds and "Columns" in ds and not walker.saw_pixel_data:
                # An image whose file stops cleanly at an element boundary before its pixels.
                raise DicomValidationError(
                    "truncated", "the image has no pixel data: the file was cut short"
                )
            _check_pixel_encoding(ts, walker.pixel_data_encapsulated)
        # The walk cannot see sequences of defined length in implicit VR (no VR on the wire);
        # the parsed dataset can.
        if _sequence_depth(ds, max_depth + 1) > max_depth:
            raise DicomValidationError(
                "too_deep", f"sequences are nested deeper than {max_depth} levels"
            )

    uids: dict[str, str] = {}
    for name in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        try:
            raw = ds.get(name)
        except Exception as exc:  # pydicom raises lazily on a malformed value
            raise DicomValidationError("unreadable", f"{name} cannot be read: {exc}") from exc
        if raw is None or str(raw).strip("\x00 ") == "":
            raise DicomValidationError("missing_uid", f"{name} is missing or empty")
        uids[name] = check_uid(str(raw), name)
    media_sop = str(meta.get("MediaStorageSOPInstanceUID", "") or "").rstrip("\x00 ")
    warnings: list[str] = []
    if media_sop and media_sop != uids["SOPInstanceUID"]:
        # Common in the wild and harmless for relaying: the dataset's UID is the one archives use.
        warnings.append(
            "MediaStorageSOPInstanceUID in the file meta differs from the dataset's SOPInstanceUID"
        )
    return InstanceInfo(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=str(ts),
        modality=str(ds.get("Modality", "") or "").strip()[:16],
        size=size,
        sha256=sha256 or sha256_file(path),
        warnings=tuple(warnings),
        study_date=date if len(date := _text(ds, "StudyDate", 8)) == 8 and date.isdigit() else "",
        study_description=_text(ds, "StudyDescription", 64),
        accession_number=_text(ds, "AccessionNumber", 16),
    )


def _check_pixel_encoding(ts: UID, encapsulated: bool | None) -> None:
    """PS3.5 A.4: Pixel Data is encapsulated (undefined length, fragments in items) exactly
    when the transfer syntax is a compressed one."""
    if encapsulated is None or encapsulated == ts.is_encapsulated:
        return
    name = ts.name or str(ts)
    if ts.is_encapsulated:
        raise DicomValidationError(
            "pixel_data_mismatch",
            f"the file says its pixels are compressed ({name}) but they are stored "
            "uncompressed: a PACS or viewer would fail to show it",
        )
    raise DicomValidationError(
        "pixel_data_mismatch",
        f"the file says its pixels are uncompressed ({name}) but they are stored "
        "compressed: a PACS or viewer would fail to show it",
    )


def _may_be_sequence(tag: BaseTag, vr: str | None) -> bool:
    """Whether an element still unconverted could turn out to be a sequence.

    Converting every raw element costs more than the rest of the validation together, so only
    what can be a sequence is converted: an explicit SQ or UN, or in implicit VR (no VR on the
    wire) a tag the dictionary calls SQ or does not know (private tags).
    """
    if vr is not None:
        return vr in ("SQ", "UN")
    if tag.is_private:
        return True
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return True


def _sequence_depth(ds: pydicom.Dataset, limit: int, depth: int = 0) -> int:
    """Deepest sequence nesting in ``ds``, counting no further than ``limit``."""
    if depth >= limit:
        return depth
    deepest = depth
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if raw is None or not _may_be_sequence(BaseTag(tag), raw.VR):
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                deepest = max(deepest, _sequence_depth(item, limit, depth + 1))
                if deepest >= limit:
                    return deepest
    return deepest


def _dataset_start(f: BinaryIO) -> int:
    """Offset of the first dataset element: after preamble, 'DICM' and the whole group 0002."""
    f.seek(132)
    pos = 132
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise EOFError("file ends inside the File Meta Information")
        group, _elem = struct.unpack("<HH", head[:4])
        if group != 0x0002:
            return pos
        vr = head[4:6]
        if vr in _LONG_VRS:
            rest = f.read(4)
            if len(rest) < 4:
                raise EOFError("file ends inside the File Meta Information")
            length = struct.unpack("<I", rest)[0]
            header = 12
        else:
            length = struct.unpack("<H", head[6:8])[0]
            header = 8
        if length == _UNDEFINED:
            raise ValueError("undefined length in the File Meta Information")
        pos += header + length
        f.seek(pos)


class _Walker:
    """Walks element headers and skips values, checking every length against the file size."""

    def __init__(self, f: BinaryIO, size: int, ts: UID, max_depth: int) -> None:
        self.f = f
        self.size = size
        self.explicit = not ts.is_implicit_VR
        self.endian = "<" if ts.is_little_endian else ">"
        self.max_depth = max_depth
        self.saw_pixel_data = False
        # Whether the top-level Pixel Data (7FE0,0010) has undefined length (encapsulated).
        self.pixel_data_encapsulated: bool | None = None

    def _read(self, n: int, where: str) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise DicomValidationError(
                "truncated", f"the file ends inside {where}: it is truncated or still being written"
            )
        return data

    def _tag(self) -> tuple[int, int]:
        g, e = struct.unpack(self.endian + "HH", self._read(4, "an element tag"))
        return g, e

    def _length_u32(self) -> int:
        return int(struct.unpack(self.endian + "I", self._read(4, "an element length"))[0])

    def _skip(self, length: int, tag: tuple[int, int]) -> None:
        pos = self.f.tell()
        if pos + length > self.size:
            raise DicomValidationError(
                "truncated",
                f"element ({tag[0]:04X},{tag[1]:04X}) declares {length} bytes but only "
                f"{self.size - pos} remain in the file",
            )
        self.f.seek(pos + length)

    def dataset(self, end: int | None, depth: int, explicit: bool | None = None) -> None:
        """Walk elements until ``end`` (defined length) or an item delimiter (undefined length)."""
        explicit = self.explicit if explicit is None else explicit
        while True:
            pos = self.f.tell()
            if end is not None and pos >= end:
                if pos > end:
                    raise DicomValidationError(
                        "truncated", "an element runs past the end of its enclosing item"
                    )
                return
            if end is None and depth == 0 and pos >= self.size:
                return
            if depth == 0 and self.size - pos < 8:
                if self._read(self.size - pos, "padding").strip(b"\x00") == b"":
                    return
                raise DicomValidationError(
                    "truncated", "the file ends with a partial element: it is truncated"
                )
            tag = self._tag()
            if depth == 0 and tag in _PIXEL_TAGS:
                self.saw_pixel_data = True
            if tag == _ITEM_DELIM:
                self._length_u32()
                if end is None and depth > 0:
                    return
                raise DicomValidationError("unreadable", "unexpected item delimiter in a dataset")
            pixel_data = depth == 0 and tag == (0x7FE0, 0x0010)
            if explicit:
                vr = self._read(2, "a value representation")
                if not (vr.isalpha() and vr.isupper()):
                    # Like pydicom: a dataset declared explicit but written implicit is read as
                    # implicit rather than refused.
                    explicit = self.explicit = False
                    self.f.seek(-2, 1)
                    vr = b""
                    length = self._length_u32()
                elif vr in _LONG_VRS:
                    self._read(2, "reserved bytes")
                    length = self._length_u32()
                else:
                    length = int(struct.unpack(self.endian + "H", self._read(2, "a length"))[0])
            else:
                vr = b""
                length = self._length_u32()
            if pixel_data:
                self.pixel_data_encapsulated = length == _UNDEFINED
            if length == _UNDEFINED:
                # SQ, encapsulated pixel data, or UN/implicit sequence: items until a delimiter.
                # PS3.5 6.2.2: a UN of undefined length is a sequence in Implicit VR Little Endian.
                self.items(tag, depth + 1, explicit=explicit and vr != b"UN")
            elif vr == b"SQ" and length:
                self.defined_sequence(tag, self.f.tell() + length, depth + 1)
            else:
                self._skip(length, tag)

    def defined_sequence(self, tag: tuple[int, int], end: int, depth: int) -> None:
        if end > self.size:
            raise DicomValidationError(
                "truncated",
                f"sequence ({tag[0]:04X},{tag[1]:04X}) runs past the end of the file",
            )
        self._check_depth(depth)
        while self.f.tell() < end:
            item = self._tag()
            length = self._length_u32()
            if item != _ITEM:
                raise DicomValidationError(
                    "unreadable", "a sequence holds something that is not an item"
                )
            if length == _UNDEFINED:
                self.dataset(None, depth)
            else:
                item_end = self.f.tell() + length
                if item_end > end:
                    raise DicomValidationError(
                        "truncated", "an item runs past the end of its sequence"
                    )
                self.dataset(item_end, depth)

    def items(self, tag: tuple[int, int], depth: int, explicit: bool) -> None:
        self._check_depth(depth)
        while True:
            item = self._tag()
            length = self._length_u32()
            if item == _SEQ_DELIM:
                return
            if item != _ITEM:
                raise DicomValidationError(
                    "unreadable",
                    f"({tag[0]:04X},{tag[1]:04X}) of undefined length holds a non-item",
                )
            if tag == (0x7FE0, 0x0010):
                # Encapsulated pixel data: fragments are opaque bytes (PS3.5 A.4).
                if length == _UNDEFINED:
                    raise DicomValidationError(
                        "unreadable", "a pixel data fragment has undefined length"
                    )
                self._skip(length, item)
            elif length == _UNDEFINED:
                self.dataset(None, depth, explicit)
            else:
                item_end = self.f.tell() + length
                if item_end > self.size:
                    raise DicomValidationError("truncated", "an item runs past the end of the file")
                self.dataset(item_end, depth, explicit)

    def _check_depth(self, depth: int) -> None:
        if depth > self.max_depth:
            raise DicomValidationError(
                "too_deep", f"sequences are nested deeper than {self.max_depth} levels"
            )


def _walk_structure(f: BinaryIO, start: int, size: int, ts: UID, max_depth: int) -> _Walker:
    f.seek(start)
    walker = _Walker(f, size, ts, max_depth)
    walker.dataset(None, 0)
    return walker
