"""DICOMweb destination: response parsing with golden bodies, request shape with a mock transport,
and delivery to a real Orthanc 1.10 with the DICOMweb plugin (integration)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from relaypacs_hub.forwarding.base import OutgoingInstance
from relaypacs_hub.forwarding.config import DicomWebDestinationConfig
from relaypacs_hub.forwarding.dicomweb import (
    NOT_ACKNOWLEDGED,
    DicomWebDestination,
    build_multipart,
    describe_failure_reason,
    interpret_store_response,
    parse_store_response,
)
from relaypacs_shared.errors import (
    DestinationError,
    RoutingError,
    TransientDestinationError,
    is_transient,
)
from tests.support.orthanc import OrthancServer, free_port, orthanc_available

# -- test data -------------------------------------------------------------------------------


def make_ct_instance(
    study_uid: str, series_uid: str, sop_uid: str, instance_number: int = 1
) -> bytes:
    """A tiny but valid CT Image Storage Part 10 file (4x4 pixels, 16 bit)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Relay^Test"
    ds.PatientID = "RELAYTEST"
    ds.StudyDate = "20240101"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = 4
    ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = bytes(range(32))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def outgoing(sop_uid: str, data: bytes, series_uid: str = "1.2.3", reads: list[str] | None = None):
    async def read() -> bytes:
        if reads is not None:
            reads.append(sop_uid)
        return data

    return OutgoingInstance(
        sop_instance_uid=sop_uid,
        series_instance_uid=series_uid,
        sop_class_uid=CTImageStorage,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        sha256="0" * 64,
        size=len(data),
        read=read,
    )


def make_study(count: int) -> tuple[str, list[OutgoingInstance], dict[str, bytes]]:
    study_uid, series_uid = generate_uid(), generate_uid()
    files = {}
    for number in range(1, count + 1):
        sop_uid = generate_uid()
        files[sop_uid] = make_ct_instance(study_uid, series_uid, sop_uid, number)
    instances = [outgoing(uid, data, series_uid) for uid, data in files.items()]
    return study_uid, instances, files


def config(url: str, **overrides: object) -> DicomWebDestinationConfig:
    return DicomWebDestinationConfig.model_validate({"name": "pacs", "url": url, **overrides})


# -- golden STOW-RS bodies, shaped as Orthanc 1.10 / DICOMweb 1.7 answers them ---------------

STUDY = "1.2.826.0.1.3680043.8.498.1"
GOOD = "1.2.826.0.1.3680043.8.498.11"
OTHER = "1.2.826.0.1.3680043.8.498.12"
GARBAGE = "1.2.826.0.1.3680043.8.498.13"


def _ref_item(uid: str, failure: int | None = None) -> dict[str, object]:
    item: dict[str, object] = {
        "00081150": {"Value": [CTImageStorage], "vr": "UI"},
        "00081155": {"Value": [uid], "vr": "UI"},
    }
    if failure is None:
        item["00081190"] = {"Value": [f"http://pacs/dicom-web/studies/{STUDY}"], "vr": "UR"}
    else:
        item["00081197"] = {"Value": [failure], "vr": "US"}
    return item


def _store_body(referenced: list[str], failed: list[tuple[str, int]]) -> bytes:
    body: dict[str, object] = {"00080005": {"Value": ["ISO_IR 100"], "vr": "CS"}}
    body["00081198"] = {"vr": "SQ"}
    body["00081199"] = {"vr": "SQ"}
    if failed:
        body["00081198"] = {"Value": [_ref_item(u, c) for u, c in failed], "vr": "SQ"}
    if referenced:
        body["00081199"] = {"Value": [_ref_item(u) for u in referenced], "vr": "SQ"}
    return json.dumps(body, indent="\t").encode()


# Both sequences empty: Orthanc could not split the body (boundary matched nothing).
EMPTY_SEQUENCES = _store_body([], [])
# 409 to POST /studies/{uid} with another study's instance: failure reason 0x0110 (272).
CONFLICT_ONLY = _store_body([], [(OTHER, 0x0110)])
# 400 for one DICOM part and one garbage part: the good one is listed, the garbage one nowhere.
GOOD_AND_GARBAGE = _store_body([GOOD], [])
# 409 with one instance of the URL's study and one of another study.
CONFLICT_MIXED = _store_body([GOOD], [(OTHER, 0x0110)])


class TestStoreResponse:
    def test_empty_sequences_mean_nothing_was_stored(self) -> None:
        result = interpret_store_response(200, EMPTY_SEQUENCES, [GOOD, OTHER])
        assert result.delivered == set()
        assert result.failed == {GOOD: NOT_ACKNOWLEDGED, OTHER: NOT_ACKNOWLEDGED}

    def test_failed_only(self) -> None:
        result = interpret_store_response(409, CONFLICT_ONLY, [OTHER])
        assert result.delivered == set()
        assert result.failed == {OTHER: "processing failure (0x0110)"}

    def test_mixed_400_keeps_the_stored_one(self) -> None:
        result = interpret_store_response(400, GOOD_AND_GARBAGE, [GOOD, GARBAGE])
        assert result.delivered == {GOOD}
        assert result.failed == {GARBAGE: NOT_ACKNOWLEDGED}

    def test_409_body_with_referenced_and_failed(self) -> None:
        result = interpret_store_response(409, CONFLICT_MIXED, [GOOD, OTHER, GARBAGE])
        assert result.delivered == {GOOD}
        assert result.failed == {
            OTHER: "processing failure (0x0110)",
            GARBAGE: NOT_ACKNOWLEDGED,
        }

    def test_202_with_warning_and_out_of_resources(self) -> None:
        body = json.loads(_store_body([GOOD], [(OTHER, 0xA700)]))
        body["00081199"]["Value"][0]["00081196"] = {"Value": [0xB000], "vr": "US"}
        parsed = parse_store_response(json.dumps(body).encode())
        assert parsed.warnings == {GOOD: 0xB000}
        result = interpret_store_response(202, json.dumps(body).encode(), [GOOD, OTHER])
        assert result.delivered == {GOOD}
        assert result.failed == {OTHER: "out of resources at the archive (0xA700)"}

    def test_duplicate_reason_counts_as_delivered(self) -> None:
        result = interpret_store_response(409, _store_body([], [(GOOD, 0x0111)]), [GOOD])
        assert result.delivered == {GOOD}
        assert result.failed == {}

    def test_failed_without_reason_and_reason_as_string(self) -> None:
        body = json.loads(_store_body([], [(GOOD, 0), (OTHER, 0)]))
        items = body["00081198"]["Value"]
        del items[0]["00081197"]
        items[1]["00081197"]["Value"] = ["A900"]
        result = interpret_store_response(200, json.dumps(body).encode(), [GOOD, OTHER])
        assert result.failed[GOOD] == "archive refused the instance without giving a reason"
        assert result.failed[OTHER] == "data set does not match SOP class (0xA900)"

    def test_uids_the_request_did_not_send_are_ignored(self) -> None:
        result = interpret_store_response(200, _store_body([GOOD, OTHER], []), [GOOD])
        assert result.delivered == {GOOD}
        assert result.failed == {}

    @pytest.mark.parametrize(
        ("code", "words"),
        [
            (0xA700, "out of resources at the archive (0xA700)"),
            (0xA7C1, "out of resources at the archive (0xA7C1)"),
            (0xA900, "data set does not match SOP class (0xA900)"),
            (0xC000, "cannot understand the data set (0xC000)"),
            (0xC122, "transfer syntax not supported by the archive (0xC122)"),
            (0x0122, "SOP class not supported by the archive (0x0122)"),
            (0x0110, "processing failure (0x0110)"),
            (0xBEEF, "failure reason (0xBEEF)"),
        ],
    )
    def test_failure_reasons_in_plain_words(self, code: int, words: str) -> None:
        assert describe_failure_reason(code) == words

    @pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
    def test_server_trouble_is_transient(self, status: int) -> None:
        with pytest.raises(TransientDestinationError, match=str(status)):
            interpret_store_response(status, b"<html>busy</html>", [GOOD])

    @pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 413, 415])
    def test_unreadable_body_is_a_destination_error_with_status_and_excerpt(
        self, status: int
    ) -> None:
        body = b'{"HttpError": "Unsupported Media Type", "OrthancStatus": 3000}'
        with pytest.raises(DestinationError) as info:
            interpret_store_response(status, body, [GOOD])
        assert not is_transient(info.value)
        assert str(status) in str(info.value)
        assert "Unsupported Media Type" in str(info.value)

    def test_excerpt_is_short(self) -> None:
        with pytest.raises(DestinationError) as info:
            interpret_store_response(403, b"x" * 10_000, [GOOD])
        assert len(str(info.value)) < 400


# -- request shape, with a mock transport ----------------------------------------------------


def test_multipart_boundary_never_occurs_in_the_payload() -> None:
    body, content_type = build_multipart([b"abc", b"def"])
    boundary = re.search(r"boundary=(\S+)", content_type)
    assert boundary is not None
    assert body.count(b"--" + boundary.group(1).encode()) == 3
    assert body.endswith(b"--" + boundary.group(1).encode() + b"--\r\n")


class Recorder:
    """A mock archive: answers STOW-RS by listing every part it could read as referenced."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.parts_per_request: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        content_type = request.headers["content-type"]
        boundary = content_type.split("boundary=")[1].encode()
        parts = request.content.split(b"--" + boundary)[1:-1]
        self.parts_per_request.append(len(parts))
        uids = [p.split(b"\r\n\r\n", 1)[1][:-2].decode() for p in parts]
        return httpx.Response(200, content=_store_body(uids, []))


async def test_batches_are_bounded_and_sent_with_content_length() -> None:
    recorder = Recorder()
    reads: list[str] = []
    uids = [f"1.2.3.{n}" for n in range(12)]
    instances = [outgoing(uid, uid.encode(), reads=reads) for uid in uids]
    destination = DicomWebDestination(
        config("http://pacs.example/dicom-web/", max_batch_instances=5),
        transport=httpx.MockTransport(recorder),
    )
    try:
        result = await destination.deliver(STUDY, instances)
    finally:
        await destination.aclose()
    assert result.delivered == set(uids)
    assert recorder.parts_per_request == [5, 5, 2]
    for request in recorder.requests:
        assert str(request.url) == "http://pacs.example/dicom-web/studies"
        assert request.headers["content-length"] == str(len(request.content))
        assert "transfer-encoding" not in request.headers
        assert request.headers["accept"] == "application/dicom+json"
        assert request.headers["content-type"].startswith(
            'multipart/related; type="application/dicom"; boundary='
        )
    assert reads == uids


async def test_bytes_are_read_one_batch_at_a_time() -> None:
    events: list[str] = []

    def archive(request: httpx.Request) -> httpx.Response:
        events.append("post")
        return Recorder()(request)

    instances = [outgoing(f"1.2.3.{n}", b"x" * 600, reads=events) for n in range(6)]
    destination = DicomWebDestination(
        config("http://pacs.example/dicom-web", max_batch_bytes=1500),
        transport=httpx.MockTransport(archive),
    )
    try:
        await destination.deliver(STUDY, instances)
    finally:
        await destination.aclose()
    # 600-byte instances under a 1500-byte cap: two per batch, each batch read just before its POST.
    assert events == [
        "1.2.3.0", "1.2.3.1", "post",
        "1.2.3.2", "1.2.3.3", "post",
        "1.2.3.4", "1.2.3.5", "post",
    ]  # fmt: skip


BASIC = "Basic " + base64.b64encode(b"relay:s3cret").decode()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"username": "relay", "password": "s3cret"}, BASIC),
        ({"bearer_token": "tok-123"}, "Bearer tok-123"),
        ({}, None),
    ],
)
async def test_authentication_header(settings: dict[str, str], expected: str | None) -> None:
    seen: list[str | None] = []

    def archive(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=[])

    destination = DicomWebDestination(
        config("http://pacs.example/dicom-web", **settings), transport=httpx.MockTransport(archive)
    )
    try:
        await destination.confirm(STUDY, [GOOD])
    finally:
        await destination.aclose()
    assert seen == [expected]


def test_both_basic_and_bearer_is_refused() -> None:
    with pytest.raises(RoutingError):
        DicomWebDestination(config("http://pacs", username="a", password="b", bearer_token="c"))


async def test_confirm_pages_through_an_archive_that_caps_results() -> None:
    held = [f"1.2.3.{n}" for n in range(7)]
    queries: list[dict[str, str]] = []

    def archive(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        queries.append(params)
        offset = int(params.get("offset", "0"))
        page = held[offset : offset + 3]  # caps at 3 whatever the limit asks
        if not page:
            return httpx.Response(204)
        return httpx.Response(200, json=[{"00080018": {"vr": "UI", "Value": [u]}} for u in page])

    destination = DicomWebDestination(
        config("http://pacs.example/dicom-web"), transport=httpx.MockTransport(archive)
    )
    try:
        found = await destination.confirm(STUDY, [*held, "9.9.9"])
    finally:
        await destination.aclose()
    assert found == set(held)
    assert [q["offset"] for q in queries] == ["0", "3", "6", "7"]


async def test_confirm_stops_when_the_archive_ignores_offset() -> None:
    calls = 0

    def archive(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json=[{"00080018": {"vr": "UI", "Value": ["1.2.3.1"]}}])

    destination = DicomWebDestination(
        config("http://pacs.example/dicom-web"), transport=httpx.MockTransport(archive)
    )
    try:
        found = await destination.confirm(STUDY, ["1.2.3.1", "1.2.3.2"])
    finally:
        await destination.aclose()
    assert found == {"1.2.3.1"}
    assert calls == 2


@pytest.mark.parametrize("status", [204, 404])
async def test_confirm_treats_no_content_and_not_found_as_none_held(status: int) -> None:
    destination = DicomWebDestination(
        config("http://pacs.example/dicom-web"),
        transport=httpx.MockTransport(lambda request: httpx.Response(status)),
    )
    try:
        assert await destination.confirm(STUDY, [GOOD]) == set()
    finally:
        await destination.aclose()


# -- network failures ------------------------------------------------------------------------


async def test_unreachable_archive_is_transient() -> None:
    port = free_port()  # nothing listens there
    destination = DicomWebDestination(config(f"http://127.0.0.1:{port}/dicom-web"))
    study_uid, instances, _ = make_study(1)
    try:
        with pytest.raises(TransientDestinationError) as info:
            await destination.deliver(study_uid, instances)
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        with pytest.raises(TransientDestinationError):
            await destination.confirm(study_uid, [i.sop_instance_uid for i in instances])
    finally:
        await destination.aclose()


async def test_archive_that_never_answers_is_transient() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # read the request, answer nothing
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    destination = DicomWebDestination(
        config(f"http://127.0.0.1:{port}/dicom-web", timeout_seconds=0.5)
    )
    study_uid, instances, _ = make_study(1)
    try:
        with pytest.raises(TransientDestinationError) as info:
            await destination.deliver(study_uid, instances)
        assert isinstance(info.value.__cause__, httpx.TimeoutException)
    finally:
        await destination.aclose()
        server.close()
        await server.wait_closed()


# -- against a real Orthanc ------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc() -> Iterator[OrthancServer]:
    with OrthancServer() as server:
        yield server


@pytest.fixture
async def destination(orthanc: OrthancServer) -> AsyncIterator[DicomWebDestination]:
    dest = DicomWebDestination(config(orthanc.dicomweb_url, max_batch_instances=5))
    yield dest
    await dest.aclose()


@pytest.mark.integration
@pytest.mark.skipif(
    not orthanc_available(),
    reason="needs /usr/sbin/Orthanc and the DICOMweb plugin (apt: orthanc orthanc-dicomweb)",
)
class TestOrthanc:
    async def test_study_in_batches_is_delivered_confirmed_and_intact(
        self, orthanc: OrthancServer, destination: DicomWebDestination
    ) -> None:
        study_uid, instances, files = make_study(12)
        result = await destination.deliver(study_uid, instances)
        assert result.failed == {}
        assert result.delivered == set(files)
        assert await destination.confirm(study_uid, list(files)) == set(files)
        assert study_uid in orthanc.study_instance_uids()
        for sop_uid, data in files.items():
            assert orthanc.fetch_instance_file(sop_uid) == data

    async def test_delivering_again_counts_as_delivered(
        self, orthanc: OrthancServer, destination: DicomWebDestination
    ) -> None:
        study_uid, instances, files = make_study(3)
        await destination.deliver(study_uid, instances)
        count = orthanc.instance_count()
        again = await destination.deliver(study_uid, instances)
        assert again.delivered == set(files)
        assert again.failed == {}
        assert orthanc.instance_count() == count

    async def test_garbage_part_fails_and_the_good_one_is_stored(
        self, orthanc: OrthancServer, destination: DicomWebDestination
    ) -> None:
        study_uid, (good,), files = make_study(1)
        garbage = outgoing(generate_uid(), b"this is not a DICOM file\x00" * 40)
        result = await destination.deliver(study_uid, [good, garbage])
        assert result.delivered == {good.sop_instance_uid}
        assert result.failed == {garbage.sop_instance_uid: NOT_ACKNOWLEDGED}
        assert orthanc.fetch_instance_file(good.sop_instance_uid) == files[good.sop_instance_uid]
        assert orthanc.instance_id(garbage.sop_instance_uid) is None

    async def test_confirm_unknown_study_is_empty(self, destination: DicomWebDestination) -> None:
        assert await destination.confirm(generate_uid(), [generate_uid()]) == set()

    async def test_confirm_reports_only_what_is_held(
        self, destination: DicomWebDestination
    ) -> None:
        study_uid, instances, files = make_study(2)
        await destination.deliver(study_uid, instances[:1])
        missing = instances[1].sop_instance_uid
        held = await destination.confirm(study_uid, list(files))
        assert held == {instances[0].sop_instance_uid}
        assert missing not in held
