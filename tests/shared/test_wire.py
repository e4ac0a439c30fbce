"""Wire format of the agent <-> hub API: Content-Digest (RFC 9530) and the commit manifest."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from relaypacs_shared.errors import ProtocolError
from relaypacs_shared.wire import (
    CommitRequest,
    DestinationStatus,
    ManifestEntry,
    StudyStatus,
    format_content_digest,
    parse_content_digest,
)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SOP = "1.2.826.0.1.3680043.8.498.1"


def test_the_digest_of_nothing_has_the_rfc_9530_form() -> None:
    # RFC 9530 Appendix B: the sha-256 of an empty body.
    assert format_content_digest(EMPTY_SHA256) == (
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    )


@settings(database=None)
@given(digest=st.binary(min_size=32, max_size=32))
def test_digest_round_trip(digest: bytes) -> None:
    header = format_content_digest(digest.hex())
    assert header == "sha-256=:" + base64.b64encode(digest).decode("ascii") + ":"
    assert parse_content_digest(header) == digest.hex()


@pytest.mark.parametrize(
    "header",
    [
        "sha-512=:" + "A" * 86 + "==:, sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:, sha-512=:" + "A" * 86 + "==:",
        "  sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
    ],
    ids=["after-another-algorithm", "before-another-algorithm", "leading-space"],
)
def test_the_sha_256_member_is_found_among_others(header: str) -> None:
    assert parse_content_digest(header) == EMPTY_SHA256


@pytest.mark.parametrize(
    "header",
    [
        "",
        "sha-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",  # no colons: not a byte sequence
        "sha-512=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",  # other algorithm only
        "xsha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",  # not the sha-256 key
        "sha-256=:YWJj:",  # valid base64, 3 bytes
        "sha-256=:" + base64.b64encode(bytes(33)).decode() + ":",  # 33 bytes
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF:",  # broken padding
        f"sha-256=:{EMPTY_SHA256}:",  # hex, not base64
        "sha-256=::",
    ],
    ids=[
        "empty",
        "no-colons",
        "only-sha-512",
        "other-key",
        "too-short",
        "too-long",
        "bad-padding",
        "hex-not-base64",
        "empty-value",
    ],
)
def test_a_bad_content_digest_is_a_protocol_error(header: str) -> None:
    with pytest.raises(ProtocolError):
        parse_content_digest(header)


def test_a_commit_request_carries_its_manifest() -> None:
    request = CommitRequest(
        service_level="stat", instances=[ManifestEntry(sop_instance_uid=SOP, sha256=EMPTY_SHA256)]
    )
    assert request.model_dump(mode="json") == {
        "service_level": "stat",
        "instances": [{"sop_instance_uid": SOP, "sha256": EMPTY_SHA256}],
        "facility": None,
        "received_at": None,
        "clinical_history": None,
        "referring_clinician": None,
    }


@pytest.mark.parametrize(
    "sha256",
    [
        EMPTY_SHA256.upper(),
        EMPTY_SHA256[:-1],
        EMPTY_SHA256 + "0",
        "g" * 64,
        "",
        format_content_digest(EMPTY_SHA256),
    ],
    ids=["uppercase", "63-chars", "65-chars", "not-hex", "empty", "base64-header"],
)
def test_a_commit_request_refuses_a_bad_sha256(sha256: str) -> None:
    with pytest.raises(ValidationError):
        CommitRequest.model_validate({"instances": [{"sop_instance_uid": SOP, "sha256": sha256}]})


def test_a_commit_request_refuses_an_empty_manifest_and_unknown_levels() -> None:
    with pytest.raises(ValidationError):
        CommitRequest(instances=[])
    with pytest.raises(ValidationError):
        CommitRequest.model_validate(
            {
                "service_level": "urgent",
                "instances": [{"sop_instance_uid": SOP, "sha256": EMPTY_SHA256}],
            }
        )


def _destination(state: str) -> DestinationStatus:
    return DestinationStatus(
        destination="pacs", state=state, attempts=1, delivered_instances=1, confirmed_instances=1
    )


@pytest.mark.parametrize(
    ("states", "delivered"),
    [([], False), (["done"], True), (["done", "done"], True), (["done", "retrying"], False)],
)
def test_a_study_is_delivered_only_when_every_destination_is_done(
    states: list[str], delivered: bool
) -> None:
    status = StudyStatus(
        study_instance_uid="1.2.3",
        state="forwarding",
        service_level="routine",
        instance_count=1,
        destinations=[_destination(s) for s in states],
    )
    assert status.delivered_everywhere is delivered
