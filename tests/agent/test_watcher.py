"""The watched inbox: a file is taken only once it has stopped changing for settle_seconds."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.ingest.watcher import InboxWatcher
from relaypacs_agent.store.db import Store
from relaypacs_dev.generate import GeneratedStudy

if TYPE_CHECKING:
    from .conftest import AgentDirs

Drop = Callable[..., Path]
SETTLE = 2.0


@pytest.fixture
def watcher(ingestor: Ingestor, dirs: AgentDirs) -> InboxWatcher:
    return InboxWatcher(dirs.inbox, ingestor, settle_seconds=SETTLE, scan_interval=1.0)


def _outcomes(results: list) -> list[str]:  # type: ignore[type-arg]
    return [r.outcome for r in results]


def _inbox_files(dirs: AgentDirs) -> list[str]:
    return sorted(
        p.relative_to(dirs.inbox).as_posix() for p in dirs.inbox.rglob("*") if p.is_file()
    )


def test_a_file_still_growing_is_left_alone_until_it_settles(
    watcher: InboxWatcher, store: Store, small_study: GeneratedStudy, dirs: AgentDirs
) -> None:
    data = small_study.files[0].read_bytes()
    path = dirs.inbox / "arriving.dcm"
    path.write_bytes(data[:4000])
    assert watcher.scan_once(now=0.0) == []
    with path.open("ab") as f:
        f.write(data[4000:8000])
    assert watcher.scan_once(now=1.5) == []
    with path.open("ab") as f:
        f.write(data[8000:])
    assert watcher.scan_once(now=3.0) == []  # stable since the last growth only
    assert watcher.scan_once(now=3.0 + SETTLE - 0.1) == []
    assert path.exists()
    assert store.query("SELECT count(*) FROM quarantine")[0][0] == 0

    assert _outcomes(watcher.scan_once(now=3.0 + SETTLE)) == ["accepted"]
    row = store.get_instance(small_study.sop_instance_uids[0])
    assert row is not None
    assert Path(row["spool_path"]).read_bytes() == data
    assert watcher.results == {"accepted": 1}


def test_a_file_rewritten_in_place_at_the_same_size_waits_again(
    watcher: InboxWatcher, small_study: GeneratedStudy, dirs: AgentDirs
) -> None:
    data = small_study.files[0].read_bytes()
    path = dirs.inbox / "rewritten.dcm"
    path.write_bytes(bytes(len(data)))  # a copy tool that preallocates, then fills in
    assert watcher.scan_once(now=0.0) == []
    mtime = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    assert watcher.scan_once(now=SETTLE + 0.5) == []
    assert watcher.scan_once(now=2 * SETTLE) == []
    assert _outcomes(watcher.scan_once(now=2 * SETTLE + 0.5)) == ["accepted"]


def test_hidden_and_partial_files_are_ignored(
    watcher: InboxWatcher, small_study: GeneratedStudy, drop: Drop, dirs: AgentDirs
) -> None:
    src = small_study.files[0]
    ignored = [".hidden.dcm", "copying.dcm.part", "copying.tmp", "LOUD.PART", ".staging/a.dcm"]
    for name in ignored:
        drop(src, name)
    drop(small_study.files[1], "visible.dcm")

    watcher.scan_once(now=0.0)
    results = watcher.scan_once(now=10.0)

    assert _outcomes(results) == ["accepted"]
    assert results[0].sop_instance_uid == small_study.sop_instance_uids[1]
    assert _inbox_files(dirs) == sorted(ignored)
    assert not dirs.quarantine.exists() or not any(dirs.quarantine.rglob("*"))


def test_files_in_subfolders_are_found(
    watcher: InboxWatcher, small_study: GeneratedStudy, drop: Drop, dirs: AgentDirs
) -> None:
    drop(small_study.files[0], "CT1/2024/01/IM0001")
    drop(small_study.files[1], "CT1/2024/02/IM0002")

    assert watcher.scan_once(now=0.0) == []
    assert _outcomes(watcher.scan_once(now=SETTLE)) == ["accepted", "accepted"]
    assert _inbox_files(dirs) == []


def test_a_file_that_vanishes_is_forgotten(
    watcher: InboxWatcher, small_study: GeneratedStudy, drop: Drop
) -> None:
    path = drop(small_study.files[0], "moved-away.dcm")
    assert watcher.scan_once(now=0.0) == []
    stat = path.stat()
    path.unlink()
    assert watcher.scan_once(now=1.0) == []

    # Back with the same size and mtime: it is a new arrival and must settle afresh.
    drop(small_study.files[0], "moved-away.dcm")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert watcher.scan_once(now=5.0) == []
    assert _outcomes(watcher.scan_once(now=5.0 + SETTLE)) == ["accepted"]


def test_a_file_cut_in_its_meta_header_does_not_block_the_inbox(
    watcher: InboxWatcher, small_study: GeneratedStudy, drop: Drop, dirs: AgentDirs
) -> None:
    # 142 bytes: inside the (0002,0000) value, where pydicom raises BytesLengthException.
    (dirs.inbox / "cut.dcm").write_bytes(small_study.files[0].read_bytes()[:142])
    drop(small_study.files[1], "later/good.dcm")  # os.walk visits the top folder first

    watcher.scan_once(now=0.0)
    results = watcher.scan_once(now=SETTLE)

    assert sorted((r.outcome, r.reason) for r in results) == [
        ("accepted", ""),
        ("quarantined", "truncated"),
    ]
