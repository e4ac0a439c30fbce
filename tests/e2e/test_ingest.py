"""Ingest end to end through real processes: C-STORE from dcmtk, CD exports and zips in watched
folders relayed to the hub's archive, and an agent SIGKILLed in the middle of a large import."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet

from relaypacs_dev.generate import generate_study
from tests.e2e.helpers import archive_files
from tests.support.dcmtk import echoscu, require, storescu
from tests.support.orthanc import free_port
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]


def _dataset_bytes(path: Path) -> bytes:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return path.read_bytes()[132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength) :]


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet
    finally:
        conn.close()


def test_storescu_sends_200_instances_and_they_are_relayed(tmp_path: Path) -> None:
    require("storescu")
    study = generate_study(tmp_path / "ct", instances=200, series=2, seed=500, rows=64, columns=64)
    archive = tmp_path / "archive"
    hub = HubProcess(
        tmp_path, destinations_file=str(folder_destinations(tmp_path / "d.toml", archive))
    )
    hub.start()
    port = free_port()
    agent = AgentProcess(
        tmp_path, hub.url, dimse_port=str(port), dimse_host="127.0.0.1",
        dimse_release_grace_seconds="0.5", quiet_period_seconds="600",
    )  # fmt: skip
    agent.start()
    try:
        wait_for(lambda: echoscu(port) == 0, 30, "the agent's SCP to answer C-ECHO", interval=0.5)
        out = storescu(port, [tmp_path / "ct"])
        assert out.returncode == 0, out.stderr[-2000:]
        # Ready at release + grace, not after the 10-minute quiet period.
        wait_for(
            lambda: agent.status()["totals"]["studies_by_state"].get("delivered") == 1,
            120,
            "the C-STORE study delivered",
            interval=1,
        )
        found = archive_files(archive)
        assert set(found) == set(study.sop_instance_uids)
        for f, sop in zip(study.files, study.sop_instance_uids, strict=True):
            assert _dataset_bytes(found[sop]) == _dataset_bytes(f)
        totals = agent.status()["totals"]
        assert (totals["instances"], totals["duplicates"], totals["quarantined"]) == (200, 0, 0)
    finally:
        assert agent.terminate() == 0, agent.log()[-3000:]
        assert hub.terminate() == 0


def test_a_cd_export_and_a_zip_in_watched_folders_are_relayed(tmp_path: Path) -> None:
    cd_study = generate_study(tmp_path / "s1", instances=12, seed=510, rows=64, columns=64)
    zip_study = generate_study(
        tmp_path / "s2", modality="MR", instances=10, seed=511, rows=64, columns=64
    )
    archive = tmp_path / "archive"
    hub = HubProcess(
        tmp_path, destinations_file=str(folder_destinations(tmp_path / "d.toml", archive))
    )
    hub.start()
    cd_folder = tmp_path / "cd-drop"
    cd_folder.mkdir()
    folders = [{"path": str(cd_folder), "name": "cd", "mode": "copy", "service_level": "stat",
                "metadata": {"facility": "North"}}]  # fmt: skip
    agent = AgentProcess(tmp_path, hub.url, watch_folders=json.dumps(folders))
    agent.start()
    try:
        fs = FileSet()
        for f in cd_study.files:
            fs.add(f)
        fs.write(tmp_path / "cd")
        (tmp_path / "cd" / "VIEWER.EXE").write_bytes(b"MZ" + bytes(100))
        for p in sorted((tmp_path / "cd").rglob("*")):
            if p.is_file():
                dest = cd_folder / "CD1" / p.relative_to(tmp_path / "cd")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(p.read_bytes())
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for i, f in enumerate(zip_study.files):
                zf.write(f, f"export/IM{i:04d}")
        (agent.inbox / "mr.zip.part").write_bytes(buf.getvalue())
        (agent.inbox / "mr.zip.part").rename(agent.inbox / "mr.zip")
        wait_for(
            lambda: agent.status()["totals"]["studies_by_state"].get("delivered") == 2,
            120,
            "both studies delivered",
            interval=1,
        )
        found = archive_files(archive)
        originals = {
            sop: f
            for st in (cd_study, zip_study)
            for f, sop in zip(st.files, st.sop_instance_uids, strict=True)
        }
        assert set(found) == set(originals)
        for sop, path in found.items():
            assert _dataset_bytes(path) == _dataset_bytes(originals[sop])
        status = agent.status()
        by_uid = {s["study_instance_uid"]: s for s in status["studies"]}
        assert by_uid[cd_study.study_instance_uid]["service_level"] == "stat"
        assert by_uid[cd_study.study_instance_uid]["metadata"] == {"facility": "North"}
        assert status["totals"]["quarantined"] == 0
        assert not (agent.inbox / "mr.zip").exists()
        assert (cd_folder / "CD1" / "VIEWER.EXE").exists()  # copy mode leaves the medium be
        assert (cd_folder / "CD1" / "DICOMDIR").exists()
    finally:
        assert agent.terminate() == 0, agent.log()[-3000:]
        assert hub.terminate() == 0


def test_sigkill_during_a_large_zip_import_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """A 600-instance zip: kill -9 once part of it is recorded, restart, check everything."""
    study = generate_study(
        tmp_path / "big", instances=600, series=3, seed=520, rows=128, columns=128
    )
    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_STORED) as zf:
        for i, f in enumerate(study.files):
            zf.write(f, f"DICOM/IM{i:05d}")
    originals = {
        sop: f.read_bytes() for f, sop in zip(study.files, study.sop_instance_uids, strict=True)
    }
    hub_url = f"http://127.0.0.1:{free_port()}"  # nobody there: this is about ingest
    settings = {
        "settle_seconds": "0.2",
        "scan_interval_seconds": "0.2",
        "conformance_check": "false",
    }
    agent = AgentProcess(tmp_path, hub_url, **settings)
    db = agent.data_dir / "agent.db"
    agent.start()
    try:
        (agent.inbox / "big.zip").write_bytes((tmp_path / "big.zip").read_bytes())
        wait_for(
            lambda: _count(db, "SELECT count(*) FROM instances") >= 60,
            120, "part of the archive recorded", interval=0.02,
        )  # fmt: skip
        agent.kill()
        taken = _count(db, "SELECT count(*) FROM instances")
        assert 0 < taken < 600, "the kill must land in the middle of the import"
        assert (agent.inbox / "big.zip").exists()

        agent = AgentProcess(tmp_path, hub_url, **settings)
        agent.start()
        wait_for(
            lambda: not (agent.inbox / "big.zip").exists(),
            180, "the import to finish after the restart", interval=0.5,
        )  # fmt: skip
        totals = agent.status()["totals"]
        assert (totals["instances"], totals["duplicates"], totals["quarantined"]) == (600, 0, 0)
        spool = agent.data_dir / "spool"
        files = sorted(spool.glob("??/*.dcm"))
        assert len(files) == 600
        rows = {
            r[0]: (r[1], r[2])
            for r in sqlite3.connect(db).execute(
                "SELECT sop_instance_uid, sha256, spool_path FROM instances"
            )
        }
        for sop, (sha, path) in rows.items():
            data = Path(path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sha == Path(path).stem
            assert data == originals[sop]
        assert set(rows) == set(originals)
        assert list((agent.data_dir / "staging").glob("*")) == []
        assert list(spool.rglob(".*")) == []
        leftovers = [p for p in (agent.data_dir / "incoming").rglob("*") if p.is_file()]
        assert leftovers == []
    finally:
        if agent.alive():
            assert agent.terminate() == 0, agent.log()[-3000:]
