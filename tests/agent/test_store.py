"""The agent's catalogue: migrations, the study life cycle it records, one writer for threads."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

from relaypacs_agent.store.db import Store
from relaypacs_agent.store.schema import MIGRATIONS
from relaypacs_shared.dicom import InstanceInfo

STUDY = "1.2.826.0.1.3680043.8.498.100"


def _info(sop: str, study: str = STUDY) -> InstanceInfo:
    return InstanceInfo(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid=study,
        series_instance_uid=study + ".1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        size=10,
        sha256=hashlib.sha256(sop.encode()).hexdigest(),
        warnings=("a warning",),
    )


def _add(store: Store, sop: str, study: str = STUDY, level: str = "routine") -> None:
    store.add_instance(
        _info(sop, study),
        spool_path=Path("/spool") / sop,
        source="folder",
        source_path=f"/inbox/{sop}.dcm",
        service_level=level,
    )


def _study(store: Store, uid: str = STUDY) -> sqlite3.Row:
    return store.query("SELECT * FROM studies WHERE study_instance_uid = ?", (uid,))[0]


def test_opening_a_store_twice_migrates_once_and_keeps_the_data(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "agent.db"
    first = Store(db)
    _add(first, "1.1")
    first.close()

    again = Store(db)
    try:
        assert again.migrate() == []
        names = [r["name"] for r in again.query("SELECT name FROM _migrations ORDER BY name")]
        assert names == sorted(name for name, _ in MIGRATIONS)
        assert again.get_instance("1.1") is not None
        assert again.query("SELECT journal_mode FROM pragma_journal_mode")[0][0] == "wal"
    finally:
        again.close()


def test_a_new_instance_opens_a_receiving_study(store: Store) -> None:
    _add(store, "1.1")
    row = store.get_instance("1.1")
    assert row is not None
    assert (row["state"], row["study_instance_uid"], row["warnings"]) == (
        "spooled",
        STUDY,
        '["a warning"]',
    )
    assert _study(store)["state"] == "receiving"


def test_a_late_instance_reopens_a_committed_study_and_stat_wins(store: Store) -> None:
    _add(store, "1.1")
    assert store.mark_committed(STUDY, _study(store)["last_instance_at"], "{}")
    assert _study(store)["state"] == "committed"

    _add(store, "1.2", level="stat")
    study = _study(store)
    assert (study["state"], study["service_level"]) == ("receiving", "stat")
    _add(store, "1.3", level="routine")  # a routine follow-up never downgrades a stat study
    assert _study(store)["service_level"] == "stat"


def test_a_commit_is_not_recorded_if_an_instance_arrived_meanwhile(store: Store) -> None:
    _add(store, "1.1")
    seen = _study(store)["last_instance_at"]
    time.sleep(0.01)
    _add(store, "1.2")
    assert store.mark_committed(STUDY, seen, "{}") is False
    assert _study(store)["state"] == "receiving"


def test_due_studies_wait_for_quiet_and_backoff_and_put_stat_first(store: Store) -> None:
    _add(store, "1.1", study="1.2.10")
    _add(store, "2.1", study="1.2.20", level="stat")
    _add(store, "3.1", study="1.2.30")
    now = time.time()

    assert store.due_studies(quiet_period=60, now=now) == []
    due = [r["study_instance_uid"] for r in store.due_studies(quiet_period=0, now=now + 1)]
    assert due == ["1.2.20", "1.2.10", "1.2.30"]

    store.defer_study("1.2.10", "hub unreachable", delay=30)
    due = [r["study_instance_uid"] for r in store.due_studies(quiet_period=0, now=now + 1)]
    assert due == ["1.2.20", "1.2.30"]
    deferred = _study(store, "1.2.10")
    assert (deferred["attempts"], deferred["last_error"]) == (1, "hub unreachable")
    later = [r["study_instance_uid"] for r in store.due_studies(quiet_period=0, now=now + 31)]
    assert "1.2.10" in later


def test_the_same_quarantine_path_is_recorded_once(store: Store, tmp_path: Path) -> None:
    for _ in range(2):
        store.add_quarantine(
            path=tmp_path / "q" / "x.dcm",
            original_name="x.dcm",
            source="folder",
            reason="truncated",
            message="cut",
            size=3,
            sha256=None,
            sop_uid=None,
        )
    assert store.quarantine_paths() == {str(tmp_path / "q" / "x.dcm")}


def test_threads_share_one_writer_without_losing_a_write(store: Store) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(50):
                store.add_duplicate(f"{worker}.{i}", "0" * 64, f"{i}.dcm", "folder")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Another process (``relaypacs-agent status``) reads through its own connection.
    reader = sqlite3.connect(store.path)
    try:
        assert reader.execute("SELECT count(*) FROM duplicates").fetchone()[0] == 200
    finally:
        reader.close()
