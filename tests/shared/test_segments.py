"""Segment format v1: round trip, integrity, and safety against hostile segments."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaypacs_shared.errors import ChecksumMismatch, ProtocolError
from relaypacs_shared.segments import (
    MAGIC,
    SegmentEntry,
    SegmentItem,
    build_segment,
    extract_entry,
    read_index,
    should_compress,
    write_segment,
)


def _items(tmp: Path, blobs: list[bytes], compress: list[bool]) -> list[SegmentItem]:
    out = []
    for i, (blob, c) in enumerate(zip(blobs, compress, strict=True)):
        p = tmp / f"{i}.dcm"
        p.write_bytes(blob)
        out.append(
            SegmentItem(
                path=p,
                sop_instance_uid=f"1.2.3.{i}",
                series_instance_uid="1.2.3",
                sha256=hashlib.sha256(blob).hexdigest(),
                size=len(blob),
                compress=c,
            )
        )
    return out


@settings(
    max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(
    blobs=st.lists(st.binary(max_size=5000), min_size=1, max_size=6),
    data=st.data(),
)
def test_round_trip_gives_back_every_instance(
    tmp_path: Path, blobs: list[bytes], data: st.DataObject
) -> None:
    compress = data.draw(st.lists(st.booleans(), min_size=len(blobs), max_size=len(blobs)))
    items = _items(tmp_path, blobs, compress)
    buf = io.BytesIO()
    length, sha, index = write_segment(buf, segment_id="s1", study_instance_uid="1.2", items=items)
    assert length == len(buf.getvalue())
    assert sha == hashlib.sha256(buf.getvalue()[:-32]).hexdigest() == buf.getvalue()[-32:].hex()
    parsed = read_index(buf, length)
    assert parsed == index
    for entry, blob in zip(parsed.entries, blobs, strict=True):
        out = io.BytesIO()
        assert extract_entry(buf, entry, out) == hashlib.sha256(blob).hexdigest()
        assert out.getvalue() == blob


def test_compression_shrinks_smooth_pixel_data(tmp_path: Path) -> None:
    from relaypacs_dev.generate import generate_study

    st_ = generate_study(tmp_path / "s", instances=3, seed=1, rows=256, columns=256)
    raw = sum(f.stat().st_size for f in st_.files)
    items = [
        SegmentItem(
            f,
            sop,
            st_.series_instance_uids[0],
            hashlib.sha256(f.read_bytes()).hexdigest(),
            f.stat().st_size,
            True,
        )
        for f, sop in zip(st_.files, st_.sop_instance_uids, strict=True)
    ]
    built = build_segment(
        tmp_path / "x.seg", segment_id="x", study_instance_uid=st_.study_instance_uid, items=items
    )
    assert built.length < 0.8 * raw
    assert built.raw_bytes == raw


@settings(
    max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_damaged_byte_is_detected(tmp_path: Path, position: int, flip: int) -> None:
    items = _items(tmp_path, [b"A" * 3000, b"B" * 1000], [True, False])
    buf = io.BytesIO()
    length, _, _ = write_segment(buf, segment_id="s", study_instance_uid="1.2", items=items)
    raw = bytearray(buf.getvalue())
    raw[position % length] ^= flip
    with pytest.raises((ChecksumMismatch, ProtocolError)):
        read_index(io.BytesIO(bytes(raw)), length)


def test_truncated_segment_is_refused(tmp_path: Path) -> None:
    items = _items(tmp_path, [b"A" * 100], [False])
    buf = io.BytesIO()
    _length, _, _ = write_segment(buf, segment_id="s", study_instance_uid="1.2", items=items)
    short = buf.getvalue()[:-10]
    with pytest.raises((ChecksumMismatch, ProtocolError)):
        read_index(io.BytesIO(short), len(short))


def test_decompression_bomb_is_stopped(tmp_path: Path) -> None:
    """An entry that decompresses beyond its declared size is refused, not inflated."""
    items = _items(tmp_path, [b"\0" * 2_000_000], [True])
    buf = io.BytesIO()
    _, _, index = write_segment(buf, segment_id="s", study_instance_uid="1.2", items=items)
    lying = index.entries[0].model_copy(update={"size": 1000})
    with pytest.raises(ProtocolError, match="beyond its declared size"):
        extract_entry(buf, lying, io.BytesIO())


def test_spool_file_changed_since_ingest_is_refused(tmp_path: Path) -> None:
    items = _items(tmp_path, [b"original"], [False])
    items[0].path.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        write_segment(io.BytesIO(), segment_id="s", study_instance_uid="1.2", items=items)


def test_bad_magic_is_refused() -> None:
    blob = b"NOTASEG!" + bytes(100)
    with pytest.raises(ProtocolError, match="magic"):
        read_index(io.BytesIO(blob), len(blob))
    assert MAGIC[6] == 1  # version byte


def test_only_native_transfer_syntaxes_are_compressed() -> None:
    assert should_compress("1.2.840.10008.1.2.1")
    assert should_compress("1.2.840.10008.1.2")
    assert not should_compress("1.2.840.10008.1.2.4.50")  # JPEG baseline
    assert not should_compress("1.2.840.10008.1.2.4.90")  # JPEG 2000
    assert not should_compress("1.2.840.10008.1.2.1.99")  # deflated


def test_a_few_kilobytes_that_inflate_to_a_gigabyte_cost_one_block(tmp_path: Path) -> None:
    """An attack run sent a 9.5 KB segment entry that decompressed to 1 GiB: decompression now
    runs in bounded blocks and stops at the declared size."""
    import tracemalloc

    import zstandard

    comp = io.BytesIO()
    with zstandard.ZstdCompressor(level=19).stream_writer(comp, closefd=False) as w:
        zeros = bytes(1024 * 1024)
        for _ in range(1024):
            w.write(zeros)
    payload = comp.getvalue()
    assert len(payload) < 100_000
    seg = MAGIC + payload
    entry = SegmentEntry(
        sop_instance_uid="1.2.3",
        series_instance_uid="1.2",
        sha256="0" * 64,
        size=4096,
        encoding="zstd",
        offset=len(MAGIC),
        length=len(payload),
    )
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="beyond its declared size"):
            extract_entry(io.BytesIO(seg), entry, io.BytesIO())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, peak


def _deflate_entry(payload: bytes, size: int) -> tuple[bytes, SegmentEntry]:
    """A segment prefix with one raw-DEFLATE entry, as the upload app in a browser writes it."""
    return MAGIC + payload, SegmentEntry(
        sop_instance_uid="1.2.3",
        series_instance_uid="1.2",
        sha256="0" * 64,
        size=size,
        encoding="deflate",
        offset=len(MAGIC),
        length=len(payload),
    )


@pytest.mark.parametrize("size", [0, 1, 5000, 3 * 1024 * 1024 + 17])
def test_deflate_entries_come_back_byte_for_byte(size: int) -> None:
    import zlib

    original = (bytes(range(256)) * (size // 256 + 1))[:size]
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    seg, entry = _deflate_entry(c.compress(original) + c.flush(), size)
    out = io.BytesIO()
    assert extract_entry(io.BytesIO(seg), entry, out) == hashlib.sha256(original).hexdigest()
    assert out.getvalue() == original


def test_a_deflate_bomb_costs_one_block(tmp_path: Path) -> None:
    """A few KB of DEFLATE inflating to a gigabyte stop past the declared size, memory bounded."""
    import tracemalloc
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1024 * 1024)
    payload = b"".join(c.compress(zeros) for _ in range(1024)) + c.flush()
    assert len(payload) < 2_000_000
    seg, entry = _deflate_entry(payload, 4096)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="beyond its declared size"):
            extract_entry(io.BytesIO(seg), entry, io.BytesIO())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, peak


def test_damaged_or_truncated_deflate_is_refused() -> None:
    import zlib

    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = c.compress(b"x" * 100_000 + bytes(range(256)) * 50) + c.flush()
    seg, entry = _deflate_entry(payload[: len(payload) // 2], 100_000 + 256 * 50)
    with pytest.raises(ProtocolError, match="not valid deflate"):
        extract_entry(io.BytesIO(seg), entry, io.BytesIO())
    seg, entry = _deflate_entry(b"\xff" * 64, 10)
    with pytest.raises(ProtocolError):
        extract_entry(io.BytesIO(seg), entry, io.BytesIO())


def test_a_segment_the_browser_built_is_read_by_the_hub() -> None:
    """tests/shared/data/browser-segment.bin is what the upload app's segment builder
    (pwa/src/upload/segment.ts, checked by segment.test.ts) writes for two fixed instances: one
    DEFLATEd, one stored as it is. The hub's reader takes it as it takes an agent's."""
    blob = (Path(__file__).parent / "data" / "browser-segment.bin").read_bytes()
    index = read_index(io.BytesIO(blob), len(blob))
    assert index.segment_id == "seg-fixture"
    assert [e.encoding for e in index.entries] == ["deflate", "identity"]
    smooth = bytes((i >> 6) & 0xFF for i in range(70_000))
    jpeg = b"not compressed again: already JPEG"
    for entry, original in zip(index.entries, [smooth, jpeg], strict=True):
        out = io.BytesIO()
        assert extract_entry(io.BytesIO(blob), entry, out) == entry.sha256
        assert out.getvalue() == original
