"""Ingest: every file ends as exactly one instance, duplicate or quarantine entry, bytes intact."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from relaypacs_agent.ingest.files import put_in_spool
from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.store.db import Store
from relaypacs_dev.generate import GeneratedStudy
from relaypacs_shared.dicom import validate_file

if TYPE_CHECKING:
    from .conftest import AgentDirs

Drop = Callable[..., Path]


def _count(store: Store, table: str) -> int:
    return int(store.query(f"SELECT count(*) FROM {table}")[0][0])


def _quarantined(store: Store) -> list[tuple[Path, dict[str, object]]]:
    """Each quarantined file with what its sidecar says."""
    out = []
    for row in store.query("SELECT path FROM quarantine ORDER BY id"):
        path = Path(row["path"])
        sidecar = path.with_name(path.name + ".reason.json")
        out.append((path, json.loads(sidecar.read_text(encoding="utf-8"))))
    return out


def _conflicting_copy(src: Path, dest: Path) -> Path:
    """Same SOP Instance UID, other bytes: a re-sent image someone edited on the modality."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src)
        ds.SeriesDescription = "EDITED ON THE CONSOLE"
        dest.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dest)
    return dest


def test_an_instance_is_spooled_byte_for_byte_and_the_original_let_go(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, drop: Drop
) -> None:
    src = small_study.files[0]
    path = drop(src)
    result = ingestor.ingest(path)

    assert result.outcome == "accepted"
    assert result.sop_instance_uid == small_study.sop_instance_uids[0]
    assert result.study_instance_uid == small_study.study_instance_uid
    assert not path.exists()
    row = store.get_instance(small_study.sop_instance_uids[0])
    assert row is not None
    assert Path(row["spool_path"]).read_bytes() == src.read_bytes()
    assert (row["state"], row["source_path"]) == ("spooled", str(path))


def test_the_same_bytes_from_another_path_are_a_duplicate(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, drop: Drop
) -> None:
    src = small_study.files[0]
    assert ingestor.ingest(drop(src, "first.dcm")).outcome == "accepted"
    again = drop(src, "resent/second.dcm")
    result = ingestor.ingest(again)

    assert result.outcome == "duplicate"
    assert not again.exists()
    assert _count(store, "instances") == 1
    dup = store.query("SELECT * FROM duplicates")
    assert [(r["sop_instance_uid"], r["original_name"]) for r in dup] == [
        (small_study.sop_instance_uids[0], "second.dcm")
    ]


def test_the_same_uid_with_other_bytes_is_quarantined_as_a_conflict(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, drop: Drop, dirs: AgentDirs
) -> None:
    src = small_study.files[0]
    assert ingestor.ingest(drop(src)).outcome == "accepted"
    edited = _conflicting_copy(src, dirs.inbox / "edited.dcm")
    edited_bytes = edited.read_bytes()
    assert edited_bytes != src.read_bytes()

    result = ingestor.ingest(edited)

    assert (result.outcome, result.reason) == ("quarantined", "conflict")
    assert not edited.exists()
    [(kept, sidecar)] = _quarantined(store)
    assert kept.read_bytes() == edited_bytes
    assert sidecar["reason"] == "conflict"
    assert sidecar["original_name"] == "edited.dcm"
    assert sidecar["sop_instance_uid"] == small_study.sop_instance_uids[0]
    row = store.get_instance(small_study.sop_instance_uids[0])
    assert row is not None
    assert Path(row["spool_path"]).read_bytes() == src.read_bytes()  # the first one is kept


def test_a_file_seen_again_after_a_crash_before_unlink_is_replayed(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, drop: Drop, dirs: AgentDirs
) -> None:
    path = drop(small_study.files[0])
    # The crash: spooled and recorded, but the original was never removed.
    info = validate_file(path)
    store.add_instance(
        info,
        spool_path=put_in_spool(path, dirs.spool, info.sha256),
        source="folder",
        source_path=str(path),
        service_level="routine",
    )

    result = ingestor.ingest(path)

    assert result.outcome == "replayed"
    assert not path.exists()
    assert (_count(store, "instances"), _count(store, "duplicates")) == (1, 0)


def test_a_spool_copy_left_by_a_crash_before_the_row_is_reused(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, drop: Drop, dirs: AgentDirs
) -> None:
    path = drop(small_study.files[0])
    info = validate_file(path)
    put_in_spool(path, dirs.spool, info.sha256)  # the crash: copied, not recorded

    assert ingestor.ingest(path).outcome == "accepted"
    assert [p.read_bytes() for p in dirs.spool.rglob("*.dcm")] == [
        small_study.files[0].read_bytes()
    ]


def test_a_refused_file_is_kept_in_quarantine_with_a_sidecar(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, dirs: AgentDirs
) -> None:
    cut = small_study.files[1].read_bytes()[:-1000]
    path = dirs.inbox / "interrupted.dcm"
    path.write_bytes(cut)

    result = ingestor.ingest(path)

    assert (result.outcome, result.reason) == ("quarantined", "truncated")
    [(kept, sidecar)] = _quarantined(store)
    assert kept.read_bytes() == cut
    assert (sidecar["reason"], sidecar["size"], sidecar["original_name"]) == (
        "truncated",
        len(cut),
        "interrupted.dcm",
    )
    row = store.query("SELECT reason, message FROM quarantine")[0]
    assert row["reason"] == "truncated"
    assert row["message"] == sidecar["message"]


def test_reconcile_records_a_quarantined_file_whose_row_was_lost(
    ingestor: Ingestor, store: Store, dirs: AgentDirs
) -> None:
    path = dirs.inbox / "notes.txt"
    path.write_text("not an image at all\n" * 20)
    assert ingestor.ingest(path).reason == "not_dicom"
    [(kept, _)] = _quarantined(store)
    with store.tx() as conn:  # the crash: file and sidecar moved, row never committed
        conn.execute("DELETE FROM quarantine")

    assert ingestor.reconcile_quarantine() == 1
    rows = store.query("SELECT path, reason, original_name FROM quarantine")
    assert [tuple(r) for r in rows] == [(str(kept), "not_dicom", "notes.txt")]
    assert ingestor.reconcile_quarantine() == 0


def test_reconcile_drops_a_sidecar_whose_file_never_moved(
    ingestor: Ingestor, store: Store, dirs: AgentDirs
) -> None:
    sidecar = dirs.quarantine / "20240101" / "abc_lost.dcm.reason.json"
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text(json.dumps({"reason": "truncated"}), encoding="utf-8")

    assert ingestor.reconcile_quarantine() == 0
    assert not sidecar.exists()
    assert _count(store, "quarantine") == 0


def test_a_mixed_batch_adds_up(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, drop: Drop, dirs: AgentDirs
) -> None:
    files = [drop(f, f"study/{i}.dcm") for i, f in enumerate(small_study.files)]
    files.append(drop(small_study.files[0], "resent.dcm"))
    files.append(_conflicting_copy(small_study.files[1], dirs.inbox / "edited.dcm"))
    (dirs.inbox / "empty.dcm").write_bytes(b"")
    (dirs.inbox / "cut.dcm").write_bytes(small_study.files[2].read_bytes()[:700])
    (dirs.inbox / "readme.txt").write_text("hello\n")
    files += [dirs.inbox / "empty.dcm", dirs.inbox / "cut.dcm", dirs.inbox / "readme.txt"]

    outcomes = Counter(ingestor.ingest(f).outcome for f in files)

    assert outcomes == {"accepted": 3, "duplicate": 1, "quarantined": 4}
    assert len(files) == outcomes["accepted"] + outcomes["duplicate"] + outcomes["quarantined"]
    assert (
        _count(store, "instances"),
        _count(store, "duplicates"),
        _count(store, "quarantine"),
    ) == (3, 1, 4)
    assert [p for p in dirs.inbox.rglob("*") if p.is_file()] == []
    spooled = sorted(p.read_bytes() for p in dirs.spool.rglob("*.dcm"))
    assert spooled == sorted(f.read_bytes() for f in small_study.files)
    reasons = sorted(str(s["reason"]) for _, s in _quarantined(store))
    assert reasons == ["conflict", "empty", "not_dicom", "truncated"]
