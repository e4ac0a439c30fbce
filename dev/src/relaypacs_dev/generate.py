"""Deterministic, realistic synthetic CT and MR studies for tests and benchmarks.

Each study is a set of DICOM Part 10 files (PS3.10 Section 7) in Explicit VR Little Endian
(PS3.5 Section A.2) conforming to the CT Image IOD (PS3.3 A.3) or the MR Image IOD (PS3.3 A.4):
every Type 1 and Type 2 attribute of their mandatory modules is present, Type 1 ones with a value.

Pixel data is a 3D head phantom (nested ellipsoids: skin, fat, skull, grey and white matter,
ventricles, orbits, a sinus and a small lesion) sliced axially, plus Gaussian noise. That makes
files the size a scanner writes (a 512x512 slice is 512 KiB of pixels) and as compressible as real
ones, which matters because the relay's throughput depends on both.

Everything is a function of the arguments: the same arguments give byte-identical files. UIDs are
hashed from the arguments with :func:`pydicom.uid.generate_uid` (PS3.5 Section 9 and Annex B),
dates and times come from the seed, never from the clock.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path, PurePath
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "GeneratedStudy",
    "Modality",
    "generate_study",
]

Modality = Literal["CT", "MR"]

#: (0002,0012) for files we write: a fixed UID under pydicom's root, hashed from
#: "relaypacs-dev|implementation-class", so it never changes between releases and golden bytes
#: stay golden.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.95841777892420484629639285064763277654"
#: (0002,0013), SH: at most 16 characters (PS3.5 Table 6.2-1).
IMPLEMENTATION_VERSION_NAME = "RELAYPACS_DEV_1"

_BITS_STORED = 12
_MAX_STORED = (1 << _BITS_STORED) - 1
#: CT stores HU + 1024 so that air (-1000 HU) and the padding (-1024 HU) stay unsigned.
_CT_INTERCEPT = -1024
#: Stored value outside the CT reconstruction circle, declared as Pixel Padding Value (0028,0120).
_CT_PADDING = 0
#: Slices of one series cover this much of the patient, within realistic slice thicknesses.
_COVERAGE_MM = 150.0
_MIN_THICKNESS_MM = 0.5
_MAX_THICKNESS_MM = 5.0


@dataclass(frozen=True)
class GeneratedStudy:
    """What :func:`generate_study` wrote.

    ``files``, ``sop_instance_uids`` are parallel and in write order (series by series, then by
    Instance Number); ``series_instance_uids`` is in Series Number order.
    """

    study_instance_uid: str
    files: list[Path]
    series_instance_uids: list[str]
    sop_instance_uids: list[str]
    total_bytes: int


# --- Phantom -----------------------------------------------------------------------------------


class _Tissue(IntEnum):
    AIR = 0
    SKIN = 1
    FAT = 2
    BONE = 3
    GREY = 4
    WHITE = 5
    CSF = 6
    VITREOUS = 7
    LESION = 8


class _Ellipsoid(NamedTuple):
    """An ellipsoid with its axes along x/y (in-plane, mm, rotated by ``angle`` degrees) and z.

    ``z0`` and ``cz`` are in normalised slice position, -1 (first slice) to 1 (last slice), so
    every series sweeps through the whole head whatever its slice count.
    """

    cx: float
    cy: float
    ax: float
    ay: float
    angle: float
    z0: float
    cz: float
    tissue: _Tissue


# Painted in order, later ones over earlier ones. Patient coordinates (PS3.3 C.7.6.2.1.1): +x is
# the patient's left, +y posterior, so the orbits and sinus sit at negative y.
_HEAD: tuple[_Ellipsoid, ...] = (
    _Ellipsoid(0, 0, 78, 98, 0, 0.0, 1.10, _Tissue.SKIN),
    _Ellipsoid(0, 0, 76, 96, 0, 0.0, 1.08, _Tissue.FAT),
    _Ellipsoid(0, 2, 73, 92, 0, 0.0, 1.04, _Tissue.BONE),
    _Ellipsoid(0, 3, 67, 86, 0, 0.05, 0.93, _Tissue.GREY),
    _Ellipsoid(0, 5, 56, 73, 0, 0.10, 0.70, _Tissue.WHITE),
    _Ellipsoid(-11, 0, 6, 24, 18, 0.15, 0.32, _Tissue.CSF),
    _Ellipsoid(11, 0, 6, 24, -18, 0.15, 0.32, _Tissue.CSF),
    _Ellipsoid(0, 14, 2.5, 9, 0, 0.0, 0.20, _Tissue.CSF),
    _Ellipsoid(-22, 4, 8, 13, 10, 0.05, 0.22, _Tissue.GREY),
    _Ellipsoid(22, 4, 8, 13, -10, 0.05, 0.22, _Tissue.GREY),
    _Ellipsoid(28, 40, 7, 6, 30, 0.40, 0.12, _Tissue.LESION),
    _Ellipsoid(0, -72, 16, 11, 0, -0.72, 0.20, _Tissue.AIR),
    _Ellipsoid(-30, -78, 12, 12, 0, -0.58, 0.16, _Tissue.VITREOUS),
    _Ellipsoid(30, -78, 12, 12, 0, -0.58, 0.16, _Tissue.VITREOUS),
)


class _Phantom:
    """Labels the head phantom on one study's pixel grid.

    The in-plane quadratic form of every ellipsoid is computed once per study, on its bounding
    box only; a slice is then one comparison per ellipsoid, which keeps generation well above a
    hundred 512x512 slices per second.
    """

    def __init__(self, rows: int, columns: int, spacing: float) -> None:
        self.shape = (rows, columns)
        # Pixel centres in mm relative to the image centre (the phantom's centre).
        xs = (np.arange(columns, dtype=np.float32) - (columns - 1) / 2) * spacing
        ys = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * spacing
        self._parts: list[tuple[slice, slice, npt.NDArray[np.float32], _Ellipsoid]] = []
        for e in _HEAD:
            reach = max(e.ax, e.ay)  # a bounding box that holds the ellipse at any rotation
            cols = np.flatnonzero(np.abs(xs - e.cx) <= reach)
            rws = np.flatnonzero(np.abs(ys - e.cy) <= reach)
            if cols.size == 0 or rws.size == 0:
                continue
            cs = slice(int(cols[0]), int(cols[-1]) + 1)
            rs = slice(int(rws[0]), int(rws[-1]) + 1)
            dx = (xs[cs] - e.cx)[np.newaxis, :]
            dy = (ys[rs] - e.cy)[:, np.newaxis]
            cos, sin = math.cos(math.radians(e.angle)), math.sin(math.radians(e.angle))
            u = (dx * cos + dy * sin) / e.ax
            v = (dy * cos - dx * sin) / e.ay
            self._parts.append((rs, cs, (u * u + v * v).astype(np.float32), e))

    def labels(self, z: float) -> npt.NDArray[np.uint8]:
        """Tissue labels of the axial slice at normalised position ``z`` (-1..1)."""
        out = np.zeros(self.shape, dtype=np.uint8)
        for rs, cs, q, e in self._parts:
            # The cross-section of an ellipsoid at height z is the same ellipse scaled by
            # sqrt(1 - ((z - z0) / cz)^2), i.e. q <= 1 - ((z - z0) / cz)^2.
            limit = 1.0 - ((z - e.z0) / e.cz) ** 2
            if limit > 0:
                out[rs, cs][q <= limit] = e.tissue
        return out


def _lut(values: dict[_Tissue, float]) -> npt.NDArray[np.float32]:
    return np.array([values[t] for t in _Tissue], dtype=np.float32)


# --- Acquisition protocols ---------------------------------------------------------------------


@dataclass(frozen=True)
class _CtProtocol:
    """One reconstruction of the helical head acquisition: kernel, noise and window differ."""

    description: str
    kernel: str
    noise_hu: float
    window: tuple[int, int]


@dataclass(frozen=True)
class _MrProtocol:
    """One MR sequence with its tissue contrast (arbitrary units, 12-bit)."""

    description: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    sequence_name: str
    repetition_time: float
    echo_time: float
    echo_train_length: int
    flip_angle: float
    inversion_time: float | None
    contrast: dict[_Tissue, float]


_CT_HU: dict[_Tissue, float] = {
    _Tissue.AIR: -1000,
    _Tissue.SKIN: 45,
    _Tissue.FAT: -90,
    _Tissue.BONE: 750,
    _Tissue.GREY: 40,
    _Tissue.WHITE: 28,
    _Tissue.CSF: 8,
    _Tissue.VITREOUS: 12,
    _Tissue.LESION: 65,
}

_CT_PROTOCOLS = (
    _CtProtocol("HEAD AXIAL STANDARD", "STANDARD", 5.0, (40, 80)),
    _CtProtocol("HEAD AXIAL BONE", "BONE", 25.0, (600, 2800)),
    _CtProtocol("HEAD AXIAL SOFT TISSUE", "SOFT", 4.0, (50, 150)),
)


def _mr_contrast(row: tuple[float, ...]) -> dict[_Tissue, float]:
    air, skin, fat, bone, grey, white, csf, lesion = row
    return {
        _Tissue.AIR: air,
        _Tissue.SKIN: skin,
        _Tissue.FAT: fat,
        _Tissue.BONE: bone,
        _Tissue.GREY: grey,
        _Tissue.WHITE: white,
        _Tissue.CSF: csf,
        _Tissue.VITREOUS: csf,
        _Tissue.LESION: lesion,
    }


# Relative signal per tissue: T1 has white matter over grey and dark CSF, T2 bright CSF, FLAIR
# nulls CSF so the lesion stands out, T2* dark bone.
# fmt: off
#              air  skin   fat  bone  grey white   csf lesion
_T1_SIGNAL =    (0,  450, 1100,   60,  550,  750,  220,  420)
_T2_SIGNAL =    (0,  550,  850,   50,  820,  620, 1800, 1400)
_FLAIR_SIGNAL = (0,  500,  650,   40,  900,  680,  120, 1500)
_GRE_SIGNAL =   (0,  400,  600,   30,  700,  560,  900,  760)
# fmt: on

_MR_PROTOCOLS = (
    _MrProtocol(
        description="T1 SE AX",
        scanning_sequence=("SE",),
        sequence_variant=("SP",),
        scan_options=("SP",),
        sequence_name="*se2d1",
        repetition_time=500.0,
        echo_time=12.0,
        echo_train_length=1,
        flip_angle=90.0,
        inversion_time=None,
        contrast=_mr_contrast(_T1_SIGNAL),
    ),
    _MrProtocol(
        description="T2 TSE AX",
        scanning_sequence=("SE",),
        sequence_variant=("SK", "SP"),
        scan_options=("PFP",),
        sequence_name="*tse2d1_15",
        repetition_time=4500.0,
        echo_time=95.0,
        echo_train_length=15,
        flip_angle=150.0,
        inversion_time=None,
        contrast=_mr_contrast(_T2_SIGNAL),
    ),
    _MrProtocol(
        description="FLAIR AX",
        scanning_sequence=("SE", "IR"),
        sequence_variant=("SK", "SP", "MP"),
        scan_options=("FC",),
        sequence_name="*tir2d1_16",
        repetition_time=9000.0,
        echo_time=85.0,
        echo_train_length=16,
        flip_angle=150.0,
        inversion_time=2500.0,
        contrast=_mr_contrast(_FLAIR_SIGNAL),
    ),
    _MrProtocol(
        description="T2* GRE AX",
        scanning_sequence=("GR",),
        sequence_variant=("SP",),
        scan_options=(),
        sequence_name="*fl2d1",
        repetition_time=650.0,
        echo_time=20.0,
        echo_train_length=1,
        flip_angle=20.0,
        inversion_time=None,
        contrast=_mr_contrast(_GRE_SIGNAL),
    ),
)


# --- Dataset -----------------------------------------------------------------------------------


def _uid(*parts: object) -> UID:
    # generate_uid hashes the concatenation of entropy_srcs; join with a separator so that
    # ("1", "23") and ("12", "3") do not collide. prefix=None would ignore the entropy.
    return generate_uid(entropy_srcs=["|".join(str(p) for p in ("relaypacs-dev", *parts))])


def _ds(value: float) -> str:
    """A Decimal String (PS3.5 Table 6.2-1): at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _da(when: dt.datetime) -> str:
    return when.strftime("%Y%m%d")


def _tm(when: dt.datetime) -> str:
    return when.strftime("%H%M%S.%f")[:10]  # HHMMSS.FFF


def _split(instances: int, series: int) -> list[int]:
    base, extra = divmod(instances, series)
    return [base + (1 if i < extra else 0) for i in range(series)]


def _thickness(count: int) -> float:
    return round(min(_MAX_THICKNESS_MM, max(_MIN_THICKNESS_MM, _COVERAGE_MM / count)), 3)


def _file_meta(sop_class: UID) -> FileMetaDataset:
    """File Meta Information (PS3.10 Section 7.1); (0002,0000) and (0002,0001) are added on save."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID("1.2")  # replaced per instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


@dataclass(frozen=True)
class _StudyContext:
    modality: Modality
    study_uid: UID
    frame_of_reference_uid: UID
    patient_id: str
    patient_name: str
    birth_date: dt.date
    sex: str
    age_years: int
    study_start: dt.datetime
    study_id: str
    accession_number: str
    field_strength: float
    rows: int
    columns: int
    spacing: float
    fov_mm: float


def _series_dataset(
    ctx: _StudyContext, index: int, series_uid: UID, count: int, start: dt.datetime
) -> Dataset:
    """Everything that is the same for every instance of one series."""
    ds = Dataset()
    sop_class = CTImageStorage if ctx.modality == "CT" else MRImageStorage
    ds.file_meta = _file_meta(sop_class)
    thickness = _thickness(count)

    # SOP Common (PS3.3 C.12.1). ISO_IR 100 although everything is ASCII: it is what most
    # modalities send and what a PACS must accept.
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if ctx.modality == "CT" else "OTHER"]
    ds.InstanceCreationDate = _da(start)
    ds.InstanceCreationTime = _tm(start)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = UID("1.2")  # replaced per instance
    # General Study (C.7.2.1), General Series (C.7.3.1), General Equipment (C.7.5.1) dates/times.
    ds.StudyDate = _da(ctx.study_start)
    ds.SeriesDate = _da(start)
    ds.AcquisitionDate = _da(start)
    ds.ContentDate = _da(start)
    ds.StudyTime = _tm(ctx.study_start)
    ds.SeriesTime = _tm(start)
    ds.AcquisitionTime = _tm(start)
    ds.ContentTime = _tm(start)
    ds.AccessionNumber = ctx.accession_number
    ds.Modality = ctx.modality
    ds.Manufacturer = "RelayPACS Synthetic"
    ds.InstitutionName = "Synthetic Test Hospital"
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StationName = f"SYN{ctx.modality}01"
    ds.StudyDescription = f"{ctx.modality} HEAD SYNTHETIC"
    ds.ManufacturerModelName = f"Phantom {ctx.modality}"
    # Patient (C.7.1.1) and Patient Study (C.7.2.2).
    ds.PatientName = ctx.patient_name
    ds.PatientID = ctx.patient_id
    ds.PatientBirthDate = ctx.birth_date.strftime("%Y%m%d")
    ds.PatientSex = ctx.sex
    ds.PatientAge = f"{ctx.age_years:03d}Y"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = _ds(thickness)
    ds.DeviceSerialNumber = f"SYN{ctx.modality}0001"
    ds.SoftwareVersions = "relaypacs-dev synthetic 1"

    if ctx.modality == "CT":
        ct = _CT_PROTOCOLS[index % len(_CT_PROTOCOLS)]
        ds.SeriesDescription = ct.description
        ds.ProtocolName = "HEAD ROUTINE"
        # CT Image module (C.8.2.1).
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.ReconstructionDiameter = _ds(ctx.fov_mm)
        ds.DistanceSourceToDetector = "1040"
        ds.DistanceSourceToPatient = "570"
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "160"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "1000"
        ds.XRayTubeCurrent = 280
        ds.Exposure = 280
        ds.FilterType = "HEAD FILTER"
        ds.GeneratorPower = 34
        ds.FocalSpots = "0.7"
        ds.ConvolutionKernel = ct.kernel
        ds.PatientPosition = "HFS"  # General Series, Type 2C: required for CT and MR
        ds.RevolutionTime = 1.0
        ds.SingleCollimationWidth = 0.625
        ds.TotalCollimationWidth = 40.0
        ds.SpiralPitchFactor = 0.531
        ds.CTDIvol = 55.0
        # CTDIvol means nothing without the phantom it was measured in (PS3.16 CID 4052).
        phantom = Dataset()
        phantom.CodeValue = "113690"
        phantom.CodingSchemeDesignator = "DCM"
        phantom.CodeMeaning = "IEC Head Dosimetry Phantom"
        ds.CTDIPhantomTypeCodeSequence = [phantom]
        ds.ScanOptions = "HELICAL MODE"
    else:
        mr = _MR_PROTOCOLS[index % len(_MR_PROTOCOLS)]
        ds.SeriesDescription = mr.description
        ds.ProtocolName = mr.description
        # MR Image module (C.8.3.1).
        ds.ScanningSequence = list(mr.scanning_sequence)
        ds.SequenceVariant = list(mr.sequence_variant)
        ds.ScanOptions = list(mr.scan_options) if mr.scan_options else ""  # Type 2
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = mr.sequence_name
        ds.AngioFlag = "N"
        ds.RepetitionTime = _ds(mr.repetition_time)
        ds.EchoTime = _ds(mr.echo_time)
        if mr.inversion_time is not None:
            ds.InversionTime = _ds(mr.inversion_time)  # Type 2C: required when IR
        ds.NumberOfAverages = "1"
        ds.ImagingFrequency = _ds(42.577478 * ctx.field_strength)
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = "1"
        ds.MagneticFieldStrength = _ds(ctx.field_strength)
        ds.SpacingBetweenSlices = _ds(thickness)
        ds.EchoTrainLength = mr.echo_train_length
        ds.PixelBandwidth = "200"
        ds.ReceiveCoilName = "HEAD"
        ds.TransmitCoilName = "BODY"
        ds.InPlanePhaseEncodingDirection = "ROW"
        ds.FlipAngle = _ds(mr.flip_angle)
        ds.PatientPosition = "HFS"

    # General Study / Series / Image, Frame of Reference, Image Plane (C.7.6.2).
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ctx.study_id
    ds.SeriesNumber = index + 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1  # replaced per instance
    # Allowed alongside Image Plane ("may be present otherwise"); rows go to the patient's left,
    # columns to posterior for an axial head-first-supine slice.
    ds.PatientOrientation = ["L", "P"]
    ds.ImagePositionPatient = ["0", "0", "0"]  # replaced per instance
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = ctx.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""  # Type 2; scanners rarely know a landmark
    ds.SliceLocation = "0"  # replaced per instance
    # Image Pixel (C.7.6.3).
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ctx.rows
    ds.Columns = ctx.columns
    ds.PixelSpacing = [_ds(ctx.spacing), _ds(ctx.spacing)]
    ds.BitsAllocated = 16
    ds.BitsStored = _BITS_STORED
    ds.HighBit = _BITS_STORED - 1
    ds.PixelRepresentation = 0
    if ctx.modality == "CT":
        # General Equipment; VOI LUT (C.11.2) and CT Image rescale (C.8.2.1).
        # US, not SS: Pixel Representation is 0 (the VR follows it, PS3.3 C.7.5.1.1.2).
        ds["PixelPaddingValue"] = DataElement(0x00280120, "US", _CT_PADDING)
        window = _CT_PROTOCOLS[index % len(_CT_PROTOCOLS)].window
        ds.WindowCenter = str(window[0])
        ds.WindowWidth = str(window[1])
        ds.RescaleIntercept = str(_CT_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    else:
        contrast = _MR_PROTOCOLS[index % len(_MR_PROTOCOLS)].contrast
        brain = (contrast[_Tissue.GREY] + contrast[_Tissue.WHITE]) / 2
        ds.WindowCenter = _ds(round(brain))
        ds.WindowWidth = _ds(round(2 * brain))
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Explicit OW so pydicom need not resolve the ambiguous "OB or OW" on every write.
    ds["PixelData"] = DataElement(0x7FE00010, "OW", b"")
    return ds


class _PixelSource:
    """Stored pixel values for one study: phantom labels -> tissue values -> noise -> 12 bits."""

    def __init__(self, ctx: _StudyContext, noise_rng: np.random.Generator) -> None:
        self._ctx = ctx
        self._rng = noise_rng
        self._phantom = _Phantom(ctx.rows, ctx.columns, ctx.spacing)
        ys, xs = np.ogrid[: ctx.rows, : ctx.columns]
        dy = (ys - (ctx.rows - 1) / 2) * ctx.spacing
        dx = (xs - (ctx.columns - 1) / 2) * ctx.spacing
        # CT reconstructs a disc of the reconstruction diameter; the corners are padding. Kept
        # as a 0/1 factor because multiplying is several times faster than masked assignment.
        self._inside_fov = ((dx * dx + dy * dy) <= (ctx.fov_mm / 2) ** 2).astype(np.uint16)
        # A receive-coil bias field: smooth, +-15 %, brighter towards the back of the head.
        self._bias = (1.0 + 0.15 * np.tanh(dy / 120.0) + 0.05 * np.cos(dx / 90.0)).astype(
            np.float32
        )
        self._ct_lut = _lut(_CT_HU)
        self._mr_luts = {p.description: _lut(p.contrast) for p in _MR_PROTOCOLS}

    def ct(self, z: float, protocol: _CtProtocol) -> npt.NDArray[np.uint16]:
        hu = np.take(self._ct_lut, self._phantom.labels(z))
        hu += self._rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(protocol.noise_hu)
        hu -= np.float32(_CT_INTERCEPT)
        stored = np.clip(np.rint(hu), 0, _MAX_STORED).astype(np.uint16)
        stored *= self._inside_fov  # padding outside the disc is stored value 0
        return stored

    def mr(self, z: float, protocol: _MrProtocol) -> npt.NDArray[np.uint16]:
        signal = np.take(self._mr_luts[protocol.description], self._phantom.labels(z))
        signal *= self._bias
        signal += self._rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(12.0)
        # Magnitude images: noise folds at zero (Rician in the background).
        np.abs(signal, out=signal)
        return np.clip(np.rint(signal), 0, _MAX_STORED).astype(np.uint16)


def _check_relative(name: str) -> PurePath:
    rel = PurePath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"filename_pattern must give a path inside out_dir, got {name!r}")
    return rel


def generate_study(
    out_dir: Path,
    *,
    modality: Modality = "CT",
    instances: int = 50,
    series: int = 1,
    seed: int = 0,
    rows: int = 512,
    columns: int = 512,
    study_instance_uid: str | None = None,
    patient_id: str | None = None,
    filename_pattern: str = "{series:02d}/{instance:04d}.dcm",
) -> GeneratedStudy:
    """Write one synthetic axial head study of ``instances`` images under ``out_dir``.

    Instances are split across ``series`` as evenly as possible (the first series get one more).
    Each series sweeps the whole head; its slice thickness is 150 mm / slices, kept within
    0.5..5 mm. CT series are reconstructions of one acquisition with different kernels; MR series
    cycle through T1 SE, T2 TSE, FLAIR and T2* GRE.

    ``filename_pattern`` is a :meth:`str.format` template relative to ``out_dir`` with the fields
    ``series`` and ``instance`` (1-based Series and Instance Number), ``index`` (0-based write
    order), ``modality`` and ``sop_instance_uid``. Existing files are overwritten.

    The output is a pure function of the arguments other than ``out_dir`` and
    ``filename_pattern``. ``study_instance_uid`` and ``patient_id`` override the values derived
    from the seed; Series, SOP Instance and Frame of Reference UIDs are derived from the Study
    Instance UID, so passing distinct study UIDs with one seed still gives distinct instances.

    Raises:
        ValueError: on a non-positive count or size, a negative seed, fewer instances than
            series, an invalid ``study_instance_uid``, or a pattern that leaves ``out_dir`` or
            names two instances alike.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if series < 1 or instances < series:
        raise ValueError(f"need at least one instance per series, got {instances=} {series=}")
    if rows < 1 or columns < 1 or rows > 0xFFFF or columns > 0xFFFF:
        raise ValueError(f"rows and columns must be in 1..65535 (US), got {rows}x{columns}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    # IGNORE: we raise our own error instead of pydicom's warning.
    if study_instance_uid is not None and not UID(study_instance_uid, config.IGNORE).is_valid:
        raise ValueError(f"invalid study_instance_uid {study_instance_uid!r} (PS3.5 9.1)")

    key = f"{seed}|{modality}|{instances}|{series}|{rows}x{columns}|{patient_id}"
    study_uid = UID(study_instance_uid) if study_instance_uid else _uid("study", key)
    # Metadata and noise come from separate streams so that adding a metadata draw never
    # changes the pixels of existing golden files.
    meta_rng = np.random.default_rng([seed, 0x3E7A])
    noise_rng = np.random.default_rng(seed)

    study_start = dt.datetime(2019, 1, 7, 7, 0) + dt.timedelta(
        days=int(meta_rng.integers(0, 5 * 365)), seconds=int(meta_rng.integers(0, 11 * 3600))
    )
    age = int(meta_rng.integers(18, 91))
    birth = study_start.date() - dt.timedelta(days=age * 365 + int(meta_rng.integers(1, 365)))
    fov = 250.0 if modality == "CT" else 240.0
    ctx = _StudyContext(
        modality=modality,
        study_uid=study_uid,
        frame_of_reference_uid=_uid("frame-of-reference", study_uid, key),
        patient_id=patient_id if patient_id is not None else f"SYNTHETIC-{seed:06d}",
        patient_name=f"SYNTHETIC^PATIENT{seed:04d}",
        birth_date=birth,
        sex=("F", "M")[int(meta_rng.integers(0, 2))],
        age_years=age,
        study_start=study_start,
        study_id=str(int(meta_rng.integers(1000, 100000))),
        accession_number=f"SYN{seed % 10**13:013d}",
        field_strength=(1.5, 3.0)[int(meta_rng.integers(0, 2))],
        rows=rows,
        columns=columns,
        # Square pixels with the field of view across the shorter side, so the head always fits.
        spacing=round(fov / min(rows, columns), 6),
        fov_mm=fov,
    )

    counts = _split(instances, series)
    series_uids = [_uid("series", study_uid, key, i) for i in range(series)]
    # Every name is known and checked before the first byte is written.
    sop_uids: list[UID] = []
    paths: list[Path] = []
    seen: set[PurePath] = set()
    for s, (count, series_uid) in enumerate(zip(counts, series_uids, strict=True)):
        for n in range(1, count + 1):
            sop_uid = _uid("sop", series_uid, n)
            rel = _check_relative(
                filename_pattern.format(
                    series=s + 1,
                    instance=n,
                    index=len(paths),
                    modality=modality,
                    sop_instance_uid=sop_uid,
                )
            )
            if rel in seen:
                raise ValueError(f"filename_pattern names two instances {str(rel)!r}")
            seen.add(rel)
            sop_uids.append(sop_uid)
            paths.append(out_dir / rel)

    pixels = _PixelSource(ctx, noise_rng)
    made_dirs: set[Path] = set()
    total = 0
    position = 0
    for s, count in enumerate(counts):
        # CT kernels are reconstructions of one acquisition; MR sequences follow each other.
        series_start = study_start + dt.timedelta(minutes=2 + (0 if modality == "CT" else 6 * s))
        ds = _series_dataset(ctx, s, series_uids[s], count, series_start)
        thickness = _thickness(count)
        x0 = -(columns - 1) / 2 * ctx.spacing
        y0 = -(rows - 1) / 2 * ctx.spacing
        # Head first supine, first slice at the skull base: z increases towards the head
        # (PS3.3 C.7.6.2.1.1), so the vertex is at the highest z.
        z_first = -thickness * (count - 1) / 2
        for n in range(1, count + 1):
            sop_uid, path = sop_uids[position], paths[position]
            position += 1
            z_mm = z_first + (n - 1) * thickness
            z_norm = 0.0 if count == 1 else -0.95 + 1.9 * (n - 1) / (count - 1)
            when = series_start + dt.timedelta(seconds=0.5 * (n - 1))
            if modality == "CT":
                image = pixels.ct(z_norm, _CT_PROTOCOLS[s % len(_CT_PROTOCOLS)])
            else:
                image = pixels.mr(z_norm, _MR_PROTOCOLS[s % len(_MR_PROTOCOLS)])
            ds.SOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.InstanceNumber = n
            ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z_mm)]
            ds.SliceLocation = _ds(z_mm)
            ds.AcquisitionTime = _tm(when)
            ds.ContentTime = _tm(when)
            ds.AcquisitionDate = _da(when)
            ds.ContentDate = _da(when)
            ds.PixelData = image.astype("<u2", copy=False).tobytes()
            if path.parent not in made_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                made_dirs.add(path.parent)
            # Encoding into memory and writing once is ~1 ms faster per file than letting
            # pydicom issue a hundred small writes to the file; the bytes are the same.
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            encoded = buffer.getvalue()
            path.write_bytes(encoded)
            total += len(encoded)

    return GeneratedStudy(
        study_instance_uid=str(study_uid),
        files=paths,
        series_instance_uids=[str(u) for u in series_uids],
        sop_instance_uids=[str(u) for u in sop_uids],
        total_bytes=total,
    )
