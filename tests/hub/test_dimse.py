"""DIMSE destination: C-STORE to dcmtk's storescp and to Orthanc, C-FIND confirmation, C-ECHO."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from relaypacs_dev.generate import generate_study
from relaypacs_hub.forwarding.base import DeliveryResult, OutgoingInstance
from relaypacs_hub.forwarding.config import DimseDestinationConfig
from relaypacs_hub.forwarding.dimse import DimseDestination, proposed_contexts
from relaypacs_shared.errors import TransientDestinationError
from tests.hub.conftest import outgoing_file
from tests.support.orthanc import OrthancServer, free_port, orthanc_available
from tests.support.storescp import StoreSCP, storescp_available


def dimse(port: int, **overrides: object) -> DimseDestination:
    config = DimseDestinationConfig.model_validate(
        {
            "name": "pacs",
            "type": "dimse",
            "host": "127.0.0.1",
            "port": port,
            "called_aet": "STORESCP",
            "calling_aet": "RELAYPACS",
            "batch_instances": 4,
            "timeout_seconds": 10,
            **overrides,
        }
    )
    return DimseDestination(config)


def _instance(sop_class: str, ts: str) -> OutgoingInstance:
    async def read() -> bytes:
        raise AssertionError("not read")

    return OutgoingInstance(generate_uid(), "1.2.3", sop_class, ts, "0" * 64, 10, read)


def test_contexts_offer_the_original_syntax_and_uncompressed_fallbacks() -> None:
    instances = [
        _instance(CTImageStorage, ExplicitVRLittleEndian),
        _instance(CTImageStorage, ExplicitVRLittleEndian),
        _instance(CTImageStorage, JPEGBaseline8Bit),
    ]
    assert proposed_contexts(instances, "original-or-uncompressed") == [
        (CTImageStorage, [ExplicitVRLittleEndian]),
        (CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (CTImageStorage, [JPEGBaseline8Bit]),  # compressed pixel data is never transcoded
    ]
    assert proposed_contexts(instances, "original") == [
        (CTImageStorage, [ExplicitVRLittleEndian]),
        (CTImageStorage, [JPEGBaseline8Bit]),
    ]


def jpeg_instance(out: Path, study_uid: str) -> Path:
    """A CT instance in JPEG Baseline (the fragment is opaque bytes: nobody decodes it here)."""
    source = generate_study(out / "src", instances=1, seed=3, rows=8, columns=8)
    ds = pydicom.dcmread(source.files[0])
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 62 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    path = out / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def small_study(tmp_path: Path):  # type: ignore[no-untyped-def]
    return generate_study(tmp_path / "study", instances=10, series=2, seed=11, rows=32, columns=32)


pytestmark = pytest.mark.integration
needs_storescp = pytest.mark.skipif(not storescp_available(), reason="needs dcmtk's storescp")


@needs_storescp
async def test_study_is_stored_once_with_progress_per_batch(
    storescp: StoreSCP,
    small_study,  # type: ignore[no-untyped-def]
) -> None:
    dest = dimse(storescp.port)
    batches: list[int] = []

    async def on_batch(result: DeliveryResult) -> bool:
        batches.append(len(result.delivered))
        return True

    instances = [outgoing_file(f) for f in small_study.files]
    result = await dest.deliver(small_study.study_instance_uid, instances, on_batch)
    assert result.failed == {}
    assert result.delivered == set(small_study.sop_instance_uids)
    assert batches == [4, 4, 2]
    assert storescp.received() == dict.fromkeys(small_study.sop_instance_uids, 1)
    # What arrived is the same data set, element for element, pixels included.
    for path, uid in zip(small_study.files, small_study.sop_instance_uids, strict=True):
        sent = pydicom.dcmread(path)
        stored = next(p for p in storescp.files() if pydicom.dcmread(p).SOPInstanceUID == uid)
        assert pydicom.dcmread(stored) == sent
    # Without C-FIND the acknowledgements are the confirmation.
    assert await dest.confirm(small_study.study_instance_uid, small_study.sop_instance_uids) is None


@needs_storescp
async def test_stop_at_a_batch_boundary(storescp: StoreSCP, small_study) -> None:  # type: ignore[no-untyped-def]
    dest = dimse(storescp.port)

    async def only_one_batch(result: DeliveryResult) -> bool:
        return False

    instances = [outgoing_file(f) for f in small_study.files]
    result = await dest.deliver(small_study.study_instance_uid, instances, only_one_batch)
    assert result.stopped
    assert len(result.delivered) == 4
    assert sum(storescp.received().values()) == 4


@needs_storescp
async def test_an_archive_that_speaks_only_implicit_vr_still_gets_explicit_instances(
    tmp_path: Path,
    small_study,  # type: ignore[no-untyped-def]
) -> None:
    with StoreSCP(aet="STORESCP", extra_args=["+xi"]) as implicit_only:
        # +xi after +xa: the later option wins in dcmtk's parser.
        dest = dimse(implicit_only.port)
        jpeg = jpeg_instance(tmp_path, small_study.study_instance_uid)
        instances = [outgoing_file(f) for f in [*small_study.files[:3], jpeg]]
        result = await dest.deliver(small_study.study_instance_uid, instances)
        assert result.delivered == set(small_study.sop_instance_uids[:3])
        jpeg_uid = instances[-1].sop_instance_uid
        assert "refused at negotiation" in result.failed[jpeg_uid]
        assert set(implicit_only.received()) == set(small_study.sop_instance_uids[:3])
        stored = pydicom.dcmread(implicit_only.files()[0])
        assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


async def test_nobody_listening_is_transient(small_study) -> None:  # type: ignore[no-untyped-def]
    dest = dimse(free_port(), timeout_seconds=3)
    with pytest.raises(TransientDestinationError, match="no association"):
        await dest.deliver(small_study.study_instance_uid, [outgoing_file(small_study.files[0])])
    with pytest.raises(TransientDestinationError):
        await dest.probe()


@needs_storescp
async def test_c_echo_probe(storescp: StoreSCP) -> None:
    assert "C-ECHO" in await dimse(storescp.port).probe()


@pytest.fixture(scope="module")
def orthanc_dimse() -> AsyncIterator[OrthancServer]:
    if not orthanc_available():
        pytest.skip("needs Orthanc")
    # Orthanc answers C-FIND only to modalities it knows.
    with OrthancServer(aet="ORTHANC", modalities={"hub": ["RELAYPACS", "127.0.0.1", 104]}) as o:
        yield o  # type: ignore[misc]


async def test_orthanc_over_dimse_confirmed_by_c_find(
    orthanc_dimse: OrthancServer,
    small_study,  # type: ignore[no-untyped-def]
) -> None:
    dest = dimse(orthanc_dimse.dicom_port, called_aet="ORTHANC", confirm="c-find")
    uids = small_study.sop_instance_uids
    assert await dest.confirm(small_study.study_instance_uid, uids) == set()
    instances = [outgoing_file(f) for f in small_study.files]
    result = await dest.deliver(small_study.study_instance_uid, instances[:7])
    assert result.delivered == set(uids[:7])
    # C-FIND sees exactly what Orthanc holds, across both series.
    assert await dest.confirm(small_study.study_instance_uid, uids) == set(uids[:7])
    await dest.deliver(small_study.study_instance_uid, instances)  # again, with the rest
    assert await dest.confirm(small_study.study_instance_uid, uids) == set(uids)
    for path, uid in zip(small_study.files, uids, strict=True):
        stored = pydicom.dcmread(io.BytesIO(orthanc_dimse.fetch_instance_file(uid)))
        assert stored.PixelData == pydicom.dcmread(path).PixelData
