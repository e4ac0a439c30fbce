"""The client's resume logic, without a socket: any interruption, same bytes out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaypacs_shared.errors import OffsetConflict, ProtocolError
from relaypacs_shared.tus import (
    UploadSession,
    decode_metadata,
    encode_metadata,
    format_checksum,
    parse_checksum,
)


class FakeServer:
    """Keeps bytes like a tus server; ``fail`` decides what happens to each PATCH."""

    def __init__(self) -> None:
        self.data = bytearray()

    def patch(self, offset: int, body: bytes, fate: str, cut: int) -> int | None:
        if offset != len(self.data):
            raise OffsetConflict("mismatch")
        if fate == "ok":
            self.data += body
            return len(self.data)
        if fate == "lost-request":
            return None  # nothing arrived
        if fate == "lost-response":
            self.data += body  # stored, but the client never heard
            return None
        # "partial": the connection dropped mid-body; a server without checksums keeps a prefix
        self.data += body[: cut % (len(body) + 1)]
        return None


@given(
    payload=st.binary(min_size=0, max_size=3000),
    chunk=st.integers(min_value=1, max_value=700),
    fates=st.lists(
        st.tuples(
            st.sampled_from(["ok", "lost-request", "lost-response", "partial"]),
            st.integers(0, 10_000),
        ),
        max_size=60,
    ),
)
def test_any_sequence_of_failures_yields_the_same_bytes(
    payload: bytes, chunk: int, fates: list[tuple[str, int]]
) -> None:
    server = FakeServer()
    session = UploadSession(len(payload))
    fate_iter = iter(fates)
    steps = 0
    while not session.done:
        steps += 1
        assert steps < 10_000
        patch = session.next_patch(chunk)
        assert patch is not None
        fate, cut = next(fate_iter, ("ok", 0))
        session.sent(patch)
        body = payload[patch.offset : patch.offset + patch.length]
        ack = server.patch(patch.offset, body, fate, cut)
        if ack is None:
            session.resync(len(server.data))  # HEAD after the failure
        else:
            session.acknowledged(patch, ack)
    assert bytes(server.data) == payload
    # What was sent again is bounded by what was lost: never more than one chunk per failure.
    failures = sum(1 for f, _ in fates if f != "ok")
    assert session.resent_bytes <= failures * chunk


def test_server_offset_behind_ours_goes_back_never_skips() -> None:
    s = UploadSession(100, 50)
    s.resync(20)
    assert s.offset == 20
    with pytest.raises(OffsetConflict):
        s.resync(101)


def test_wrong_acknowledged_offset_is_a_conflict() -> None:
    s = UploadSession(100)
    p = s.next_patch(10)
    assert p is not None
    with pytest.raises(OffsetConflict):
        s.acknowledged(p, 5)


@given(
    st.dictionaries(
        st.text(alphabet="abcdefgh_-", min_size=1, max_size=8), st.text(max_size=40), max_size=5
    )
)
def test_metadata_round_trip(meta: dict[str, str]) -> None:
    assert decode_metadata(encode_metadata(meta)) == meta


def test_metadata_errors() -> None:
    with pytest.raises(ProtocolError):
        decode_metadata("key not-base64!")
    with pytest.raises(ProtocolError):
        decode_metadata("a YQ==,a Yg==")


@pytest.mark.parametrize("algo", ["sha1", "sha256", "md5"])
def test_checksum_round_trip(algo: str) -> None:
    name, digest = parse_checksum(format_checksum(algo, b"data"))
    assert name == algo and len(digest) > 0
    with pytest.raises(ProtocolError):
        parse_checksum(f"{algo} AAAA")
