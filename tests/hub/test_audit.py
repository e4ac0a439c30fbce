"""The hub's audit log: uploads, commits and deliveries leave a chain that `audit verify` checks."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relaypacs_dev.generate import generate_study
from relaypacs_hub.audit import audit, read_log
from relaypacs_hub.cli import app as hub_cli
from relaypacs_hub.db.migrate import upgrade
from relaypacs_hub.db.session import make_engine, make_sessionmaker
from relaypacs_shared.audit import verify_chain
from tests.hub.conftest import hub_settings, running_hub, write_destinations

PATIENT_ID = "PID-AUDIT-7731"


def _cli(data_dir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        hub_cli, ["audit", *args], env={"RELAYPACS_HUB_DATA_DIR": str(data_dir)}
    )
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def hub_with_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub data dir after one study was uploaded, committed and delivered."""
    tmp = tmp_path_factory.mktemp("audit")
    study = generate_study(
        tmp / "src", instances=3, seed=11, rows=32, columns=32, patient_id=PATIENT_ID
    )
    dest = write_destinations(
        tmp / "destinations.toml", {"name": "archive", "type": "folder", "path": str(tmp / "out")}
    )
    settings = hub_settings(tmp, dest)

    async def run() -> None:
        gen = running_hub(settings)
        hub = await gen.__anext__()
        try:
            await hub.send(study)
            await hub.wait_delivered(study.study_instance_uid)
        finally:
            await gen.aclose()

    asyncio.run(run())
    return tmp / "hub"


def _copy(src: Path, tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    dst = tmp_path / "hub"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("objects", "uploads"))
    return dst, sqlite3.connect(dst / "hub.db", isolation_level=None)


def test_actions_are_recorded_and_the_chain_is_intact(hub_with_log: Path) -> None:
    code, out = _cli(hub_with_log, "export")
    assert code == 0, out
    records = [json.loads(line) for line in out.splitlines()]
    actions = [r["action"] for r in records]
    assert actions.count("instance.received") == 3
    assert "study.committed" in actions
    assert "forward.done" in actions
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    code, out = _cli(hub_with_log, "verify")
    assert code == 0, out
    assert f"audit log intact: {len(records)} records" in out


def test_export_carries_no_patient_identity(hub_with_log: Path) -> None:
    for fmt in ("jsonl", "atna"):
        code, out = _cli(hub_with_log, "export", "--format", fmt)
        assert code == 0, out
        assert PATIENT_ID not in out
        assert "SYNTHETIC" not in out.upper()
    code, out = _cli(hub_with_log, "export", "--format", "atna")
    assert json.loads(out.splitlines()[0])["EventIdentification"]["EventID"]["csd-code"]


def test_edited_record_fails_verify(hub_with_log: Path, tmp_path: Path) -> None:
    data, db = _copy(hub_with_log, tmp_path)
    db.execute("UPDATE audit_log SET details_json = '{\"size\":1}' WHERE seq = 2")
    code, out = _cli(data, "verify")
    assert code == 1
    assert "record 2: edited" in out


def test_deleted_record_fails_verify(hub_with_log: Path, tmp_path: Path) -> None:
    data, db = _copy(hub_with_log, tmp_path)
    db.execute("DELETE FROM audit_log WHERE seq = 3")
    code, out = _cli(data, "verify")
    assert code == 1
    assert "record 4: missing: record(s) 3 deleted" in out


def test_forged_row_fails_verify(hub_with_log: Path, tmp_path: Path) -> None:
    data, db = _copy(hub_with_log, tmp_path)
    # Make room after record 2 and forge a record with a correct-looking link to it.
    db.execute("UPDATE audit_log SET seq = seq + 1000 WHERE seq > 2")
    db.execute("UPDATE audit_log SET seq = seq - 999 WHERE seq > 1000")
    prev = db.execute("SELECT hash FROM audit_log WHERE seq = 2").fetchone()[0]
    db.execute(
        "INSERT INTO audit_log VALUES (3, '2026-01-01T00:00:00.000000Z', 'admin', "
        "'admin.rules_put', 'routing_rules', 'success', 'x', '{}', ?, ?)",
        (prev, "f" * 64),
    )
    code, out = _cli(data, "verify")
    assert code == 1
    assert "record 3: edited" in out
    assert "record 4: broken_link" in out or "record 4: edited" in out


def test_truncation_is_caught_with_the_anchor(hub_with_log: Path, tmp_path: Path) -> None:
    code, out = _cli(hub_with_log, "verify")
    anchor = out.split("(anchor ")[1].rstrip().rstrip(")")
    data, db = _copy(hub_with_log, tmp_path)
    db.execute("DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)")
    assert _cli(data, "verify")[0] == 0
    code, out = _cli(data, "verify", "--anchor", anchor)
    assert code == 1
    assert "truncated" in out


async def _concurrent_appends(url: str, n: int) -> list[object]:
    engines = [make_engine(url), make_engine(url)]
    try:
        makers = [make_sessionmaker(e) for e in engines]
        await asyncio.gather(
            *(audit(makers[i % 2], f"actor-{i % 2}", "admin.test", f"t{i}", n=i) for i in range(n))
        )
        records = [r async for r in read_log(makers[0])]
        assert len(records) == n
        return list(verify_chain(records))
    finally:
        for e in engines:
            await e.dispose()


def test_concurrent_appends_on_sqlite_keep_the_chain(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    assert asyncio.run(_concurrent_appends(url, 40)) == []


@pytest.mark.integration
def test_concurrent_appends_on_postgresql_keep_the_chain(pg_url: str) -> None:
    upgrade(pg_url)
    assert asyncio.run(_concurrent_appends(pg_url, 60)) == []
