"""Under loss a free stream sends a copy of a part that is still in flight; the first copy the
hub acknowledges whole is the part. Shown with a tus endpoint where one connection stalls (what
a run of retransmission timeouts looks like to the agent), which a real link cannot produce on
demand."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from relaypacs_agent.store.db import Store
from relaypacs_agent.store.uplink import UplinkStore
from relaypacs_agent.uplink.transfer import TransferSender


class StallingTus:
    """tus partial uploads in memory; the first upload created for part 0 stalls on its PATCH
    until released."""

    def __init__(self, loss: float) -> None:
        self.loss: float | None = loss
        self.uploads: dict[str, bytearray] = {}
        self.part_of: dict[str, str] = {}
        self.deleted: list[str] = []
        self.finals: list[list[str]] = []
        self.release = threading.Event()
        self.stalled: str | None = None
        self._lock = threading.Lock()

    def create(self, length: int, metadata: dict[str, str], *, partial: bool = False) -> str:
        with self._lock:
            url = f"/api/v1/uploads/u{len(self.uploads)}"
            self.uploads[url] = bytearray()
            self.part_of[url] = metadata.get("part", "")
            if self.stalled is None and metadata.get("part") == "0":
                self.stalled = url
        return url

    def head(self, url: str) -> int:
        return len(self.uploads[url])

    def patch(self, url: str, offset: int, data: bytes, pace: Any = None) -> int:
        if url == self.stalled:
            self.release.wait(30)
        with self._lock:
            assert len(self.uploads[url]) == offset
            self.uploads[url] += data
            return len(self.uploads[url])

    def create_final(self, part_urls: list[str], metadata: dict[str, str]) -> str:
        self.finals.append(part_urls)
        return "/api/v1/uploads/final"

    def delete(self, url: str) -> None:
        self.deleted.append(url)


def _sender(
    tmp_path: Path, tus: StallingTus, copies: int = 3
) -> tuple[TransferSender, dict[str, Any]]:
    store = Store(tmp_path / "agent.db")
    client = SimpleNamespace(http=None)
    sender = TransferSender(
        store, client, None, spool_dir=tmp_path / "spool",  # type: ignore[arg-type]
        quiet_period=1, retry_max=1, status_poll=60, streams=3, part_copies=copies,
    )  # fmt: skip
    sender.tus = tus  # type: ignore[assignment]
    data = os.urandom(1024 * 1024)
    path = tmp_path / "spool" / "seg.seg"
    path.write_bytes(data)
    now = time.time()
    with store.tx() as conn:
        conn.execute(
            "INSERT INTO segments (id, study_instance_uid, path, length, raw_bytes, sha256, "
            "sop_uids, created_at, updated_at) VALUES ('s1', '1.2.3', ?, ?, ?, ?, '[]', ?, ?)",
            (str(path), len(data), len(data), hashlib.sha256(data).hexdigest(), now, now),
        )
    seg = UplinkStore(store).segment("s1")
    return sender, {"row": seg, "data": data, "store": store}


def test_a_stalled_part_is_overtaken_by_its_copy(tmp_path: Path) -> None:
    tus = StallingTus(loss=0.3)  # 30% loss measured: many streams, and copies
    sender, seg = _sender(tmp_path, tus)
    started = time.monotonic()
    sender.upload_segment(seg["row"])
    took = time.monotonic() - started
    try:
        assert took < 10, "the segment waited for the stalled connection"
        assert not tus.release.is_set() and tus.stalled is not None
        (final,) = tus.finals
        # Part 0 is the copy's upload, not the stalled one; the joined bytes are the segment's.
        assert final[0] != tus.stalled and tus.part_of[final[0]] == "0"
        assert b"".join(bytes(tus.uploads[u]) for u in final) == seg["data"]
        store: Store = seg["store"]
        row = store.query("SELECT upload_url, offset, length FROM segment_parts WHERE idx = 0")[0]
        assert row["upload_url"] == final[0] and row["offset"] == row["length"]
        assert store.query("SELECT state FROM segments")[0]["state"] == "uploaded"
    finally:
        tus.release.set()
    # The stalled copy, once its PATCH returns, finds the part done, writes nothing and lets
    # the hub drop its upload.
    deadline = time.monotonic() + 10
    while tus.stalled not in tus.deleted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tus.stalled in tus.deleted
    row = seg["store"].query("SELECT upload_url FROM segment_parts WHERE idx = 0")[0]
    assert row["upload_url"] == final[0]


def test_no_copies_on_a_clean_link(tmp_path: Path) -> None:
    tus = StallingTus(loss=0.0)
    tus.release.set()  # nothing stalls
    sender, seg = _sender(tmp_path, tus)
    sender.upload_segment(seg["row"])
    (final,) = tus.finals
    assert len(tus.uploads) == len(final) == 3  # one upload per part, one part per stream
    assert not tus.deleted


def test_no_copies_when_the_link_is_billed_by_the_megabyte(tmp_path: Path) -> None:
    """``part_copies = 0``: the stalled part is waited for, and no byte is sent twice."""
    tus = StallingTus(loss=0.3)
    sender, seg = _sender(tmp_path, tus, copies=0)
    threading.Timer(2.0, tus.release.set).start()
    started = time.monotonic()
    sender.upload_segment(seg["row"])
    assert time.monotonic() - started >= 1.9  # it waited for the stalled connection
    (final,) = tus.finals
    assert tus.stalled in final and len(tus.uploads) == len(final)
    assert b"".join(bytes(tus.uploads[u]) for u in final) == seg["data"]
