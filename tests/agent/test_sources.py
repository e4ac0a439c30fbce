"""Ways in besides the plain inbox, and what people do with the result: copy-mode folders,
media, zips, the disk reserve, study readiness, quarantine decisions and the CLI over them."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest
from pydicom.fileset import FileSet
from typer.testing import CliRunner

from relaypacs_agent.cli import app
from relaypacs_agent.ingest.archive import Importer
from relaypacs_agent.ingest.conformance import ConformanceChecker, find_dciodvfy
from relaypacs_agent.ingest.pipeline import DiskFull, Ingestor, Source
from relaypacs_agent.ingest.quarantine import ReleaseRefused, delete, release
from relaypacs_agent.ingest.watcher import InboxWatcher
from relaypacs_agent.store.db import Store
from relaypacs_dev.generate import GeneratedStudy, generate_study

if TYPE_CHECKING:
    from .conftest import AgentDirs

Drop = Callable[..., Path]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _count(store: Store, table: str, where: str = "") -> int:
    return int(store.query(f"SELECT count(*) FROM {table} {where}")[0][0])


def _study(store: Store, uid: str) -> dict[str, object]:
    return dict(store.query("SELECT * FROM studies WHERE study_instance_uid = ?", (uid,))[0])


def _edited(src: Path, dest: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src)
        ds.SeriesDescription = "EDITED"
        dest.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dest)
    return dest


# -- watched folders ------------------------------------------------------------------------


def test_a_copy_mode_folder_keeps_originals_and_takes_each_once(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, drop: Drop, dirs: AgentDirs
) -> None:
    source = Source(name="share", keep_original=True, folder_key="share", service_level="stat")
    watcher = InboxWatcher(dirs.inbox, ingestor, settle_seconds=1, scan_interval=1, source=source)
    for i, f in enumerate(small_study.files):
        drop(f, f"s/{i}.dcm")
    watcher.scan_once(now=0)
    assert [r.outcome for r in watcher.scan_once(now=2)] == ["accepted"] * 3
    assert len(list(dirs.inbox.rglob("*.dcm"))) == 3  # originals stay
    assert watcher.scan_once(now=3) == [] and watcher.scan_once(now=10) == []
    # A restarted agent remembers them.
    again = InboxWatcher(dirs.inbox, ingestor, settle_seconds=1, scan_interval=1, source=source)
    again.scan_once(now=0)
    assert again.scan_once(now=5) == []
    assert _count(store, "instances") == 3 and _count(store, "duplicates") == 0
    study = _study(store, small_study.study_instance_uid)
    assert study["service_level"] == "stat"
    # A file changed since is taken again: here other bytes under the same UID, a conflict.
    _edited(small_study.files[0], dirs.inbox / "s" / "0.dcm")
    again.scan_once(now=20)
    assert [(r.outcome, r.reason) for r in again.scan_once(now=30)] == [("quarantined", "conflict")]
    assert (dirs.inbox / "s" / "0.dcm").exists()


def test_a_cd_export_in_the_inbox_leaves_its_viewer_alone(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, dirs: AgentDirs
) -> None:
    fs = FileSet()
    for f in small_study.files:
        fs.add(f)
    cd = dirs.inbox / "CD1"
    fs.write(cd)
    (cd / "VIEWER").mkdir()
    (cd / "VIEWER" / "viewer.exe").write_bytes(b"MZ" + bytes(500))
    (cd / "AUTORUN.INF").write_text("[autorun]\n")
    watcher = InboxWatcher(dirs.inbox, ingestor, settle_seconds=1, scan_interval=1)
    watcher.scan_once(now=0)
    results = watcher.scan_once(now=2)
    assert [r.outcome for r in results] == ["accepted"] * 3
    assert _count(store, "quarantine") == 0
    # The images are taken, then their index and emptied folders go; the rest is not ours.
    left = sorted(p.relative_to(cd).as_posix() for p in cd.rglob("*"))
    assert left == ["AUTORUN.INF", "VIEWER", "VIEWER/viewer.exe"]
    assert watcher.scan_once(now=10) == []  # and does not look at them again


def test_a_zip_dropped_into_the_inbox_is_expanded_and_removed(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, dirs: AgentDirs, tmp_path: Path
) -> None:
    with zipfile.ZipFile(dirs.inbox / "study.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i, f in enumerate(small_study.files):
            zf.write(f, f"export/IM{i}")
        zf.writestr("export/README.txt", "open with any DICOM viewer\n")
    importer = Importer(ingestor, incoming_dir=tmp_path / "incoming")
    watcher = InboxWatcher(
        dirs.inbox, ingestor, settle_seconds=1, scan_interval=1, importer=importer
    )
    watcher.scan_once(now=0)
    watcher.scan_once(now=2)
    assert watcher.results == {"accepted": 3}
    assert not (dirs.inbox / "study.zip").exists()
    rows = store.query("SELECT source, source_path, spool_path FROM instances ORDER BY source_path")
    assert [r["source_path"].split("!")[1] for r in rows] == [
        "export/IM0",
        "export/IM1",
        "export/IM2",
    ]
    assert {r["source"] for r in rows} == {"zip"}
    spooled = sorted(Path(r["spool_path"]).read_bytes() for r in rows)
    assert spooled == sorted(f.read_bytes() for f in small_study.files)
    [imp] = store.query("SELECT kind, summary FROM imports")
    summary = json.loads(imp["summary"])
    assert (imp["kind"], summary["skipped"], summary["counts"]) == (
        "zip", ["export/README.txt"], {"accepted": 3}
    )  # fmt: skip
    assert not any((tmp_path / "incoming").rglob("*.dcm"))


def test_a_dicomdir_medium_is_imported_and_missing_files_reported(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, tmp_path: Path
) -> None:
    fs = FileSet()
    for f in small_study.files:
        fs.add(f)
    cd = tmp_path / "cdrom"
    fs.write(cd)
    lost = next(cd.rglob("IM000001"))
    lost.unlink()
    (cd / "README.TXT").write_text("burnt by the modality\n")
    importer = Importer(ingestor, incoming_dir=tmp_path / "incoming")
    summary = importer.import_path(cd, Source(kind="import", keep_original=True))
    assert summary.kind == "media"
    assert summary.counts == {"accepted": 2}
    assert summary.missing == [str(lost.relative_to(cd))]
    assert summary.skipped == ["README.TXT"]
    assert (cd / "DICOMDIR").exists() and len(list(cd.rglob("IM*"))) == 2  # copied, not moved


# -- disk reserve ---------------------------------------------------------------------------


def test_the_disk_reserve_refuses_new_work_and_keeps_the_file(
    store: Store, dirs: AgentDirs, small_study: GeneratedStudy, drop: Drop
) -> None:
    free = shutil.disk_usage(dirs.inbox).free
    ingestor = Ingestor(
        store,
        spool_dir=dirs.spool,
        quarantine_dir=dirs.quarantine,
        max_instance_bytes=1 << 30,
        min_free_bytes=free + (1 << 30),
    )
    path = drop(small_study.files[0])
    with pytest.raises(DiskFull, match="reserve"):
        ingestor.ingest(path)
    watcher = InboxWatcher(dirs.inbox, ingestor, settle_seconds=1, scan_interval=1)
    watcher.scan_once(now=0)
    assert watcher.scan_once(now=2) == []
    assert path.read_bytes() == small_study.files[0].read_bytes()
    assert _count(store, "instances") == 0 and _count(store, "quarantine") == 0
    ingestor.min_free_bytes = 0  # space was freed: the next try takes it
    assert watcher.scan_once(now=1000)[0].outcome == "accepted"


@pytest.mark.integration
def test_a_file_refused_on_a_full_quarantine_disk_stays_where_it_was(
    store: Store, dirs: AgentDirs, tmp_path: Path, drop: Drop
) -> None:
    """With no room even for the reason's sidecar, setting a file aside is a full disk (the
    sender is told 507 and keeps its copy), not a crash that leaves half a quarantine entry."""
    from tests.support.smallfs import small_filesystem

    with small_filesystem(tmp_path / "qdisk", 256 * 1024) as qdisk:
        ingestor = Ingestor(
            store, spool_dir=dirs.spool, quarantine_dir=qdisk, max_instance_bytes=1 << 30
        )
        with contextlib.suppress(OSError), (qdisk / "filler").open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        path = dirs.inbox / "not-dicom.bin"
        path.write_bytes(b"not an image " * 1000)
        with pytest.raises(DiskFull, match="no space"):
            ingestor.ingest(path)
        assert path.read_bytes() == b"not an image " * 1000
        assert [p.name for p in qdisk.rglob("*") if p.is_file()] == ["filler"]
        assert _count(store, "quarantine") == 0
        (qdisk / "filler").unlink()  # space is back: the next try sets it aside with its reason
        assert ingestor.ingest(path).outcome == "quarantined"
        assert _count(store, "quarantine") == 1 and not path.exists()


# -- study readiness ------------------------------------------------------------------------


def test_quiet_period_send_now_release_and_follow_up(
    ingestor: Ingestor, store: Store, tmp_path: Path
) -> None:
    a = generate_study(tmp_path / "a", instances=2, rows=16, columns=16, seed=1)
    b = generate_study(tmp_path / "b", instances=1, rows=16, columns=16, seed=2)
    ingestor.ingest(a.files[0], Source(keep_original=True, quiet_period=3600))
    ingestor.ingest(b.files[0], Source(keep_original=True))
    now = time.time()
    due = lambda: [r["study_instance_uid"] for r in store.due_studies(60, now + 120)]  # noqa: E731
    assert due() == [b.study_instance_uid]  # a's folder asks for an hour of quiet
    assert store.mark_ready([a.study_instance_uid], at=now + 10) == 1
    assert set(due()) == {a.study_instance_uid, b.study_instance_uid}
    # A new instance after "send now" waits again.
    ingestor.ingest(a.files[1], Source(keep_original=True, quiet_period=3600))
    assert due() == [b.study_instance_uid]
    # Committed, then a late instance: the same study is receiving again (a follow-up).
    st = _study(store, b.study_instance_uid)
    assert store.mark_committed(b.study_instance_uid, st["last_instance_at"], "{}")  # type: ignore[arg-type]
    late = generate_study(
        tmp_path / "late", instances=3, rows=16, columns=16, seed=2,
        study_instance_uid=b.study_instance_uid,
    )  # fmt: skip
    ingestor.ingest(late.files[2], Source(keep_original=True))
    st = _study(store, b.study_instance_uid)
    assert (st["state"], st["commits"], st["ready_at"]) == ("receiving", 1, None)


# -- quarantine -----------------------------------------------------------------------------


def test_release_revalidates_and_accepts_when_limits_allow(
    store: Store, dirs: AgentDirs, small_study: GeneratedStudy, drop: Drop
) -> None:
    size = small_study.files[0].stat().st_size
    strict = Ingestor(
        store, spool_dir=dirs.spool, quarantine_dir=dirs.quarantine, max_instance_bytes=size - 1
    )
    assert strict.ingest(drop(small_study.files[0])).reason == "too_large"
    [entry] = store.quarantine_entries()
    with pytest.raises(ReleaseRefused, match="still refused"):
        release(strict, entry["id"])
    relaxed = Ingestor(
        store, spool_dir=dirs.spool, quarantine_dir=dirs.quarantine, max_instance_bytes=1 << 30
    )
    done = release(relaxed, entry["id"])
    assert done.outcome == "accepted"
    row = store.get_instance(small_study.sop_instance_uids[0])
    assert row is not None
    assert Path(row["spool_path"]).read_bytes() == small_study.files[0].read_bytes()
    assert not Path(entry["path"]).exists()
    assert store.quarantine_entries() == []
    assert store.quarantine_entries(include_resolved=True)[0]["resolution"] == "released"


def test_a_conflict_is_released_only_with_replace_and_keeps_both_versions(
    ingestor: Ingestor, store: Store, dirs: AgentDirs, small_study: GeneratedStudy, drop: Drop
) -> None:
    sop = small_study.sop_instance_uids[0]
    ingestor.ingest(drop(small_study.files[0]))
    edited = _edited(small_study.files[0], dirs.inbox / "edited.dcm").read_bytes()
    assert ingestor.ingest(dirs.inbox / "edited.dcm").reason == "conflict"
    [entry] = store.quarantine_entries()
    with pytest.raises(ReleaseRefused, match="--replace"):
        release(ingestor, entry["id"])
    assert release(ingestor, entry["id"], replace=True).outcome == "replaced"
    row = store.get_instance(sop)
    assert row is not None and Path(row["spool_path"]).read_bytes() == edited
    [kept] = store.quarantine_entries()
    assert kept["reason"] == "replaced"
    assert Path(kept["path"]).read_bytes() == small_study.files[0].read_bytes()
    # Once sent, a held instance cannot be replaced any more.
    store.mark_uploaded(sop)
    original_again = drop(small_study.files[0], "again.dcm")
    assert ingestor.ingest(original_again).reason == "conflict"
    newest = store.quarantine_entries(reason="conflict")[0]
    with pytest.raises(ReleaseRefused, match="already sent"):
        release(ingestor, newest["id"], replace=True)


def test_delete_removes_the_file_and_keeps_the_entry(
    ingestor: Ingestor, store: Store, dirs: AgentDirs
) -> None:
    (dirs.inbox / "letter.txt").write_text("not an image\n")
    ingestor.ingest(dirs.inbox / "letter.txt")
    [entry] = store.quarantine_entries()
    delete(ingestor, entry["id"])
    assert not Path(entry["path"]).exists()
    assert not Path(entry["path"] + ".reason.json").exists()
    assert store.quarantine_entry(entry["id"])["resolution"] == "deleted"  # type: ignore[index]
    with pytest.raises(ReleaseRefused):
        delete(ingestor, entry["id"])


# -- conformance ----------------------------------------------------------------------------


def test_dciodvfy_findings_are_recorded_and_never_block(
    ingestor: Ingestor, store: Store, small_study: GeneratedStudy, drop: Drop
) -> None:
    binary = find_dciodvfy()
    if binary is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    bundled = Path(pydicom.__file__).parent / "data" / "test_files" / "rtplan.dcm"
    assert ingestor.ingest(drop(bundled)).outcome == "accepted"  # dciodvfy objects to it
    ingestor.ingest(drop(small_study.files[0]))
    assert ConformanceChecker(store, binary).run_once() == 2
    found = {
        r["sop_instance_uid"]: json.loads(r["conformance"])
        for r in store.query("SELECT sop_instance_uid, conformance FROM instances")
    }
    rtplan = found.pop(str(pydicom.dcmread(bundled).SOPInstanceUID))
    assert any(f.startswith("error:") for f in rtplan)
    assert all("<" not in f or "Element=<" in f or "Explicit <" in f for f in rtplan)
    assert found == {small_study.sop_instance_uids[0]: []}
    assert store.unchecked_instances() == []


# -- the CLI over all of it -----------------------------------------------------------------


def test_cli_import_quarantine_and_send_now(
    tmp_path: Path, small_study: GeneratedStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAYPACS_AGENT_DATA_DIR", str(tmp_path / "agent"))
    monkeypatch.setenv("RELAYPACS_AGENT_MIN_FREE_BYTES", "0")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, f in enumerate(small_study.files):
            zf.write(f, f"IM{i}")
        zf.writestr("cut.dcm", small_study.files[0].read_bytes()[:-100])
    runner = CliRunner()

    out = runner.invoke(app, ["import", str(archive), "--send-now"])
    assert out.exit_code == 0, out.output
    assert "3 accepted, 1 quarantined" in out.output
    assert archive.exists()  # copied unless --move
    status = json.loads(runner.invoke(app, ["status", "--json"]).output)
    [study] = status["studies"]
    assert study["ready_at"] is not None and status["totals"]["quarantined"] == 1

    listed = json.loads(runner.invoke(app, ["quarantine", "list", "--json"]).output)
    assert [(e["reason"], e["original_name"]) for e in listed] == [("truncated", "cut.dcm")]
    entry = str(listed[0]["id"])
    shown = runner.invoke(app, ["quarantine", "show", entry])
    assert "cut short" in shown.output and "still refused: truncated" in shown.output
    refused = runner.invoke(app, ["quarantine", "release", entry])
    assert refused.exit_code == 1 and "still refused" in refused.output
    assert runner.invoke(app, ["quarantine", "delete", entry], input="n\n").exit_code == 1
    assert runner.invoke(app, ["quarantine", "delete", entry, "--yes"]).exit_code == 0
    assert "quarantine is empty" in runner.invoke(app, ["quarantine", "list"]).output

    again = runner.invoke(app, ["send-now", "1.2.3.4"])
    assert again.exit_code == 1
    ok = runner.invoke(app, ["send-now"])
    assert ok.exit_code == 0 and "1 study(ies)" in ok.output


def test_cli_import_of_a_refused_archive_fails_visibly(
    tmp_path: Path, small_study: GeneratedStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAYPACS_AGENT_DATA_DIR", str(tmp_path / "agent"))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("/etc/cron.d/evil", small_study.files[0].read_bytes())
    (tmp_path / "evil.zip").write_bytes(archive.getvalue())
    out = CliRunner().invoke(app, ["import", str(tmp_path / "evil.zip")])
    assert out.exit_code == 1
    assert "archive_unsafe_path" in out.output
    assert not Path("/etc/cron.d/evil").exists()
