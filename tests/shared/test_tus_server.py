"""The sans-IO tus server core both RelayPACS servers call (hub and agent LAN app)."""

from __future__ import annotations

import pytest

from relaypacs_shared import tus
from relaypacs_shared.errors import (
    OffsetConflict,
    ProtocolError,
    TooLarge,
    UnknownUpload,
    UnsupportedMediaType,
    UnsupportedVersion,
    UploadChecksumMismatch,
    UploadLocked,
)
from relaypacs_shared.wire import PROBLEMS, Problem, error_of, problem_of

V = {"tus-resumable": "1.0.0"}
HUB = tus.ServerLimits(max_size=1000)
LAN = tus.ServerLimits(
    max_size=1000, extensions=("creation", "termination"), checksum_algorithms=()
)


@pytest.mark.parametrize("raw", ["²", "١٢", "12a", "-3", "", "1" * 20, "+5"])
def test_counts_are_ascii_digits_only(raw: str) -> None:
    with pytest.raises(ProtocolError, match="Upload-Length"):
        tus.parse_count({"upload-length": raw}, "Upload-Length")


def test_creation_rules() -> None:
    with pytest.raises(UnsupportedVersion):
        tus.parse_creation({"upload-length": "5"}, HUB)
    with pytest.raises(TooLarge):
        tus.parse_creation({**V, "upload-length": "1001"}, HUB)
    with pytest.raises(ProtocolError, match="required"):
        tus.parse_creation(V, HUB)
    assert tus.parse_creation({**V, "upload-defer-length": "1"}, HUB).length is None
    with pytest.raises(ProtocolError):  # the LAN app takes no deferred lengths
        tus.parse_creation({**V, "upload-defer-length": "1"}, LAN)
    with pytest.raises(ProtocolError):  # nor concatenations
        tus.parse_creation({**V, "upload-length": "5", "upload-concat": "partial"}, LAN)
    final = tus.parse_creation({**V, "upload-concat": "final;/api/v1/uploads/ab /x/cd"}, HUB)
    assert (final.concat, final.parts, final.length) == ("final", ("ab", "cd"), None)
    with pytest.raises(ProtocolError, match="at most"):
        tus.parse_creation({**V, "upload-concat": "final;" + " x" * 65}, HUB)


def test_patch_rules() -> None:
    octets = {**V, "content-type": tus.OFFSET_CONTENT_TYPE}
    with pytest.raises(UnsupportedMediaType):
        tus.parse_patch({**V, "upload-offset": "0"}, HUB)
    req = tus.parse_patch({**octets, "upload-offset": "4", "content-length": "3"}, HUB)
    with pytest.raises(OffsetConflict) as caught:
        tus.check_patch(tus.UploadState(offset=2, length=10), req)
    assert tus.error_headers(caught.value)["Upload-Offset"] == "2"
    with pytest.raises(TooLarge):
        tus.check_patch(tus.UploadState(offset=4, length=6), req)
    assert tus.check_patch(tus.UploadState(offset=4, length=7), req) == 7
    with pytest.raises(UploadLocked):
        tus.check_patch(tus.UploadState(offset=4, length=7, concat="final"), req)
    with pytest.raises(ProtocolError, match="not accepted"):
        tus.parse_patch({**octets, "upload-offset": "0", "upload-checksum": "sha1 x"}, LAN)


def test_body_check_keeps_only_whole_matching_bodies() -> None:
    algo, digest = tus.parse_checksum(tus.format_checksum("sha256", b"abc"))
    ok = tus.BodyCheck(3, (algo, digest))
    ok.feed(b"ab")
    ok.feed(b"c")
    ok.verify(complete=True)
    bad = tus.BodyCheck(3, (algo, digest))
    bad.feed(b"abd")
    with pytest.raises(UploadChecksumMismatch):
        bad.verify(complete=True)
    with pytest.raises(TooLarge):
        tus.BodyCheck(2, None).feed(b"abc")
    cut = tus.BodyCheck(3, (algo, digest))
    cut.feed(b"ab")
    with pytest.raises(ProtocolError, match="lost"):
        cut.verify(complete=False)


def test_concat_parts_must_be_complete_partials() -> None:
    with pytest.raises(UnknownUpload):
        tus.check_concat_part("x", None)
    with pytest.raises(UnknownUpload):
        tus.check_concat_part("x", tus.UploadState(5, 5, "none"))
    with pytest.raises(ProtocolError, match="not complete"):
        tus.check_concat_part("x", tus.UploadState(4, 5, "partial"))
    assert tus.check_concat_part("x", tus.UploadState(5, 5, "partial")) == 5


@pytest.mark.parametrize("row", PROBLEMS, ids=lambda r: r.code)
def test_every_problem_code_maps_back_to_its_class(row) -> None:  # type: ignore[no-untyped-def]
    status, body = problem_of(error_of(row.status, Problem(code=row.code, detail="words")))
    if row.code == "invalid_dicom":
        assert status == 422
    else:
        assert (status, body.code) == (row.status, row.code)
    assert type(error_of(status, body)) is row.error
