"""The agent's audit log: ingest, quarantine and uplink steps chain; tampering fails verify."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relaypacs_agent.cli import app as agent_cli
from relaypacs_agent.ingest import quarantine
from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.store import audit as agent_audit
from relaypacs_agent.store.db import Store
from relaypacs_dev.generate import generate_study
from relaypacs_shared.audit import verify_chain
from tests.agent.conftest import AgentDirs, Drop

PATIENT_ID = "PID-AGENT-4417"


def _cli(dirs: AgentDirs, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        agent_cli, ["audit", *args], env={"RELAYPACS_AGENT_DATA_DIR": str(dirs.db.parent)}
    )
    return result.exit_code, result.output


@pytest.fixture
def ingested(tmp_path: Path, ingestor: Ingestor, store: Store, drop: Drop, dirs: AgentDirs):  # type: ignore[no-untyped-def]
    study = generate_study(
        tmp_path / "src", instances=3, seed=21, rows=32, columns=32, patient_id=PATIENT_ID
    )
    for f in study.files:
        assert ingestor.ingest(drop(f, f.name)).outcome == "accepted"
    assert ingestor.ingest(drop(study.files[0], "again.dcm")).outcome == "duplicate"
    junk = dirs.inbox / "SMITH_JOHN.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    assert ingestor.ingest(junk).outcome == "quarantined"
    entry = store.quarantine_entries()[0]
    quarantine.delete(ingestor, entry["id"])
    last = store.query(
        "SELECT last_instance_at FROM studies WHERE study_instance_uid = ?",
        (study.study_instance_uid,),
    )[0][0]
    assert store.mark_committed(study.study_instance_uid, last, "{}")
    store.mark_delivered(study.study_instance_uid, "{}")
    return study


def test_ingest_and_uplink_steps_are_recorded(ingested, store: Store, dirs: AgentDirs) -> None:  # type: ignore[no-untyped-def]
    records = list(agent_audit.read_log(store))
    assert [r.record.action for r in records] == [
        "instance.accepted",
        "instance.accepted",
        "instance.accepted",
        "instance.duplicate",
        "instance.quarantined",
        "quarantine.deleted",
        "study.committed",
        "study.delivered",
    ]
    assert records[-1].record.target == ingested.study_instance_uid
    assert verify_chain(records) == []
    code, out = _cli(dirs, "verify")
    assert code == 0, out
    assert "audit log intact: 8 records" in out


def test_export_carries_no_patient_identity_nor_file_names(ingested, dirs: AgentDirs) -> None:  # type: ignore[no-untyped-def]
    for fmt in ("jsonl", "atna"):
        code, out = _cli(dirs, "export", "--format", fmt)
        assert code == 0, out
        assert len(out.splitlines()) == 8
        assert PATIENT_ID not in out
        assert "SYNTHETIC" not in out.upper()
        assert "SMITH" not in out.upper()
        json.loads(out.splitlines()[0])


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("UPDATE audit_log SET target = '1.2.3' WHERE seq = 2", "record 2: edited"),
        ("DELETE FROM audit_log WHERE seq = 4", "record 5: missing"),
        (
            "INSERT INTO audit_log SELECT 99, at, actor, action, target, outcome, source, details, "
            "hash, hash FROM audit_log WHERE seq = 8",
            "record 99: missing",
        ),
    ],
)
def test_tampering_fails_verify(
    ingested, store: Store, dirs: AgentDirs, tamper: str, expected: str
) -> None:  # type: ignore[no-untyped-def]
    db = sqlite3.connect(dirs.db, isolation_level=None)
    db.execute(tamper)
    db.close()
    code, out = _cli(dirs, "verify")
    assert code == 1
    assert expected in out
