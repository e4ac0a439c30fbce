"""The synthetic study generator: valid Part 10 CT/MR files, deterministic, realistically sized."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from typer.testing import CliRunner

from relaypacs_dev.cli import app
from relaypacs_dev.generate import GeneratedStudy, Modality, generate_study

SMALL = {"rows": 64, "columns": 64}

# Type 1 attributes of the mandatory modules of the CT Image IOD (PS3.3 A.3) and MR Image IOD
# (PS3.3 A.4) that both share: present with a value.
TYPE1 = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImageType",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
    "SpecificCharacterSet",
]
# Type 2 (and the 2C ones whose condition holds here): present, possibly empty.
TYPE2 = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "SeriesNumber",
    "PatientPosition",
    "PositionReferenceIndicator",
    "Manufacturer",
    "InstanceNumber",
    "ContentDate",
    "ContentTime",
    "SliceThickness",
    "AcquisitionNumber",
]
CT_TYPE1 = ["RescaleIntercept", "RescaleSlope", "RescaleType"]
CT_TYPE2 = ["KVP"]
MR_TYPE1 = ["ScanningSequence", "SequenceVariant"]
MR_TYPE2 = ["ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength"]
# Not required by the IODs, but what a PACS worklist shows and the relay routes on.
DESCRIPTIVE = [
    "StudyDescription",
    "SeriesDescription",
    "BodyPartExamined",
    "InstitutionName",
    "SliceLocation",
    "PatientOrientation",
]


def _read(path: Path) -> FileDataset:
    return pydicom.dcmread(path)


def _hu(ds: FileDataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module", params=["CT", "MR"])
def study(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> GeneratedStudy:
    # Four MR series cover every protocol (T1, T2, FLAIR with inversion, GRE).
    out = tmp_path_factory.mktemp(f"study-{request.param}")
    return generate_study(out, modality=request.param, instances=10, series=4, seed=7, **SMALL)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_same_arguments_give_byte_identical_files(tmp_path: Path, modality: Modality) -> None:
    a = generate_study(tmp_path / "a", modality=modality, instances=6, series=2, seed=3, **SMALL)
    b = generate_study(tmp_path / "b", modality=modality, instances=6, series=2, seed=3, **SMALL)

    tree_a, tree_b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(tree_a) == 6
    assert tree_a == tree_b
    assert a.study_instance_uid == b.study_instance_uid
    assert a.series_instance_uids == b.series_instance_uids
    assert a.sop_instance_uids == b.sop_instance_uids
    assert a.total_bytes == b.total_bytes


def test_different_seeds_give_different_uids_and_pixels(tmp_path: Path) -> None:
    a = generate_study(tmp_path / "a", instances=4, series=2, seed=1, **SMALL)
    b = generate_study(tmp_path / "b", instances=4, series=2, seed=2, **SMALL)

    assert a.study_instance_uid != b.study_instance_uid
    assert not set(a.series_instance_uids) & set(b.series_instance_uids)
    assert not set(a.sop_instance_uids) & set(b.sop_instance_uids)
    assert _read(a.files[0]).PixelData != _read(b.files[0]).PixelData
    assert _read(a.files[0]).PatientID != _read(b.files[0]).PatientID


def test_given_study_uid_and_patient_id_are_used_and_keep_instances_distinct(
    tmp_path: Path,
) -> None:
    a = generate_study(tmp_path / "a", instances=2, study_instance_uid="1.2.3.4", **SMALL)
    b = generate_study(
        tmp_path / "b", instances=2, study_instance_uid="1.2.3.5", patient_id="PID-42", **SMALL
    )

    assert a.study_instance_uid == "1.2.3.4"
    assert _read(a.files[0]).StudyInstanceUID == "1.2.3.4"
    assert _read(b.files[1]).PatientID == "PID-42"
    # Same seed, different study: the instances must not collide in a PACS.
    assert not set(a.sop_instance_uids) & set(b.sop_instance_uids)
    assert not set(a.series_instance_uids) & set(b.series_instance_uids)


def test_every_file_is_part10_with_the_iod_attributes(study: GeneratedStudy) -> None:
    modality = _read(study.files[0]).Modality
    type1 = TYPE1 + (CT_TYPE1 if modality == "CT" else MR_TYPE1)
    type2 = TYPE2 + (CT_TYPE2 if modality == "CT" else MR_TYPE2)
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage

    for path, sop_uid in zip(study.files, study.sop_instance_uids, strict=True):
        raw = path.read_bytes()
        assert raw[:128] == b"\0" * 128 and raw[128:132] == b"DICM"  # PS3.10 7.1
        ds = _read(path)
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID == sop_class
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == sop_uid
        assert meta.ImplementationClassUID.is_valid
        assert meta.ImplementationVersionName
        for keyword in type1 + DESCRIPTIVE:
            assert ds.get(keyword) not in (None, ""), f"{path.name}: Type 1 {keyword} empty"
        for keyword in type2:
            assert keyword in ds, f"{path.name}: Type 2 {keyword} missing"
        assert ds.StudyInstanceUID == study.study_instance_uid
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        assert ds.PatientName.family_name == "SYNTHETIC"
        assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
        assert ds.PixelRepresentation == 0
        assert "Laterality" not in ds  # Type 2C, only for paired body parts; the head is not


def test_inversion_time_only_on_inversion_recovery_series(tmp_path: Path) -> None:
    study = generate_study(tmp_path, modality="MR", instances=4, series=4, **SMALL)
    for path in study.files:
        ds = _read(path)
        is_ir = "IR" in ds.ScanningSequence
        assert ("InversionTime" in ds) == is_ir  # Type 2C: required when IR, absent otherwise
        assert float(ds.MagneticFieldStrength) in (1.5, 3.0)
    assert any("IR" in _read(p).ScanningSequence for p in study.files)


def test_series_split_and_slice_geometry(tmp_path: Path) -> None:
    study = generate_study(tmp_path, instances=10, series=3, **SMALL)

    datasets = [_read(p) for p in study.files]
    by_series: dict[str, list[FileDataset]] = {}
    for ds in datasets:
        by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    assert list(by_series) == study.series_instance_uids
    assert [len(v) for v in by_series.values()] == [4, 3, 3]
    for number, members in enumerate(by_series.values(), start=1):
        assert {ds.SeriesNumber for ds in members} == {number}
        assert [ds.InstanceNumber for ds in members] == list(range(1, len(members) + 1))
        z = [float(ds.ImagePositionPatient[2]) for ds in members]
        steps = np.diff(z)
        assert np.allclose(steps, float(members[0].SliceThickness))
        assert [float(ds.SliceLocation) for ds in members] == z
        assert len({ds.FrameOfReferenceUID for ds in members}) == 1
    assert [p.relative_to(tmp_path).as_posix() for p in study.files[:5]] == [
        "01/0001.dcm",
        "01/0002.dcm",
        "01/0003.dcm",
        "01/0004.dcm",
        "02/0001.dcm",
    ]
    assert study.total_bytes == sum(p.stat().st_size for p in study.files)


def test_uids_are_valid_and_unique(study: GeneratedStudy) -> None:
    frame_of_reference = _read(study.files[0]).FrameOfReferenceUID
    uids = [
        study.study_instance_uid,
        frame_of_reference,
        *study.series_instance_uids,
        *study.sop_instance_uids,
    ]
    assert all(UID(u).is_valid for u in uids)
    assert len(set(uids)) == len(uids)
    assert len(study.sop_instance_uids) == len(study.files) == 10
    assert len(study.series_instance_uids) == 4


def test_ct_pixels_are_a_head_in_hounsfield_units(tmp_path: Path) -> None:
    study = generate_study(tmp_path, modality="CT", instances=9, rows=96, columns=128)
    first, middle = _read(study.files[0]), _read(study.files[4])

    hu = _hu(middle)
    assert hu.shape == (96, 128)
    assert hu.min() == -1024  # padding outside the reconstruction disc
    assert hu[0, 0] == -1024
    inside = hu[hu > -1024]
    assert np.mean(np.abs(inside + 1000) < 60) > 0.10  # air around the head
    assert np.mean((inside > 0) & (inside < 80)) > 0.20  # brain
    assert np.mean(inside > 400) > 0.01  # skull
    assert hu.max() < 1500
    # The phantom changes with slice position: the skull base slice holds less head.
    assert np.sum(_hu(first) > -500) < 0.8 * np.sum(hu > -500)


def test_mr_pixels_show_tissue_on_a_dark_background(tmp_path: Path) -> None:
    study = generate_study(tmp_path, modality="MR", instances=3, **SMALL)
    pixels = _read(study.files[1]).pixel_array.astype(np.float64)
    assert pixels.shape == (64, 64)
    assert pixels[:3, :3].mean() < 60  # corners are air: noise only
    assert pixels[24:40, 24:40].mean() > 300  # the brain
    assert pixels.max() <= 4095


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_full_size_slices_are_realistically_large_and_compressible(
    tmp_path: Path, modality: Modality
) -> None:
    study = generate_study(tmp_path, modality=modality, instances=3, seed=11)

    for path in study.files:
        assert path.stat().st_size > 512 * 512 * 2
        pixel_data = _read(path).PixelData
        assert len(pixel_data) == 512 * 512 * 2
        ratio = len(zlib.compress(pixel_data, 6)) / len(pixel_data)
        assert 0.15 < ratio < 0.8, f"{modality} zlib ratio {ratio:.2f}"


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk not installed")
def test_dcmtk_parses_files_without_error(study: GeneratedStudy) -> None:
    result = subprocess.run(
        ["dcmdump", "+E", str(study.files[-1])], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower()
    assert "(7fe0,0010) OW" in output


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_finds_no_iod_errors(study: GeneratedStudy) -> None:
    # One file per series: the series differ in protocol (kernel, MR sequence).
    for path in study.files[::3]:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
        assert not errors, f"{path}: {errors}"


def test_filename_pattern(tmp_path: Path) -> None:
    study = generate_study(
        tmp_path, instances=2, filename_pattern="{modality}/{sop_instance_uid}.dcm", **SMALL
    )
    assert [p.relative_to(tmp_path).as_posix() for p in study.files] == [
        f"CT/{uid}.dcm" for uid in study.sop_instance_uids
    ]


@pytest.mark.parametrize("pattern", ["../{instance}.dcm", "/tmp/{instance}.dcm", "{series}.dcm"])
def test_pattern_that_escapes_or_collides_is_refused_before_writing(
    tmp_path: Path, pattern: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="filename_pattern"):
        generate_study(out, instances=2, filename_pattern=pattern, **SMALL)
    assert not out.exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"instances": 2, "series": 3},
        {"instances": 0},
        {"series": 0},
        {"rows": 0},
        {"seed": -1},
        {"modality": "US"},
        {"study_instance_uid": "not.a.uid"},
    ],
)
def test_invalid_arguments_raise_value_error(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate_study(tmp_path, **{**SMALL, **kwargs})  # type: ignore[arg-type]


def test_cli_help_has_an_example() -> None:
    result = CliRunner().invoke(app, ["gen-study", "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    assert "--instances" in result.output


def test_cli_gen_study_prints_uid_count_and_size(tmp_path: Path) -> None:
    args = ["gen-study", "--out", str(tmp_path), "--modality", "MR", "--instances", "4"]
    result = CliRunner().invoke(app, [*args, "--series", "2", "--rows", "32", "--columns", "32"])

    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 4
    assert _read(files[0]).StudyInstanceUID in result.output
    assert "4 files" in result.output
    assert " MB" in result.output


def test_cli_gen_studies_uses_consecutive_seeds(tmp_path: Path) -> None:
    args = ["gen-studies", "--out", str(tmp_path), "--count", "2", "--seed", "5"]
    result = CliRunner().invoke(app, [*args, "--instances", "2", "--rows", "32", "--columns", "32"])

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study-0005", "study-0006"]
    uids = {
        _read(next((tmp_path / d).rglob("*.dcm"))).StudyInstanceUID
        for d in ("study-0005", "study-0006")
    }
    assert len(uids) == 2
    generate_study(tmp_path / "again", instances=2, seed=6, rows=32, columns=32)
    assert _tree(tmp_path / "study-0006") == _tree(tmp_path / "again")


def test_cli_rejects_impossible_split(tmp_path: Path) -> None:
    args = ["gen-study", "--out", str(tmp_path), "--instances", "2", "--series", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "series" in result.output
