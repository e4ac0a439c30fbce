"""Delivery through the hub API on the embedded defaults (SQLite, local store, folder archives):
rules, holds, dead jobs and their retry, dry runs, time to PACS, retention, admin auth."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from relaypacs_dev.generate import generate_study
from relaypacs_hub.db.models import StudyRoute
from relaypacs_hub.forwarding.worker import ForwardingWorker
from tests.hub.conftest import HubClient, hub_settings, write_destinations


def folders(tmp_path: Path, *names: str, **extra: Any) -> Path:
    entries = [{"name": n, "type": "folder", "path": str(tmp_path / n), **extra} for n in names]
    return write_destinations(tmp_path / "destinations.toml", *entries)


def archived(tmp_path: Path, dest: str, study_uid: str) -> set[str]:
    return {p.stem for p in (tmp_path / dest / study_uid).glob("*/*.dcm")}


RULES = """
[[rules]]
name = "ct"
destinations = ["ct-archive"]
[rules.match]
modality = "CT"

[[rules]]
name = "mr"
destinations = ["mr-archive"]
[rules.match]
modality = "MR"

[[rules]]
name = "stat-copy"
destinations = ["reading-room"]
priority = "stat"
[rules.match]
service_level = "stat"

[[rules]]
name = "hold-research"
hold = true
[rules.match]
attributes = [{ tag = "PatientID", regex = "^RESEARCH" }]
"""


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


async def test_rules_route_by_modality_and_service_level(
    tmp_path: Path, make_hub: Any, rules_file: Path
) -> None:
    dests = folders(tmp_path, "ct-archive", "mr-archive", "reading-room")
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests, rules_file=rules_file))
    ct = generate_study(tmp_path / "ct", modality="CT", instances=4, seed=1, rows=32, columns=32)
    mr = generate_study(tmp_path / "mr", modality="MR", instances=3, seed=2, rows=32, columns=32)
    await hub.send(ct)
    await hub.send(mr, level="stat")
    ct_status = await hub.wait_delivered(ct.study_instance_uid)
    mr_status = await hub.wait_delivered(mr.study_instance_uid)
    assert [d["destination"] for d in ct_status["destinations"]] == ["ct-archive"]
    assert [d["destination"] for d in mr_status["destinations"]] == ["mr-archive", "reading-room"]
    assert archived(tmp_path, "ct-archive", ct.study_instance_uid) == set(ct.sop_instance_uids)
    assert archived(tmp_path, "mr-archive", mr.study_instance_uid) == set(mr.sop_instance_uids)
    assert archived(tmp_path, "reading-room", mr.study_instance_uid) == set(mr.sop_instance_uids)
    assert not (tmp_path / "mr-archive" / ct.study_instance_uid).exists()
    jobs = {j["destination"]: j for j in await hub.jobs(study=mr.study_instance_uid)}
    assert jobs["reading-room"]["priority"] == 100
    assert jobs["mr-archive"]["priority"] == 100  # a STAT study stays STAT everywhere
    for job in jobs.values():
        assert job["time_to_pacs_seconds"] is not None and job["time_to_pacs_seconds"] >= 0


async def test_held_study_waits_for_an_admin_then_goes(
    tmp_path: Path, make_hub: Any, rules_file: Path
) -> None:
    dests = folders(tmp_path, "ct-archive", "mr-archive", "reading-room")
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests, rules_file=rules_file))
    study = generate_study(
        tmp_path / "s", instances=2, seed=5, rows=32, columns=32, patient_id="RESEARCH-7"
    )
    await hub.send(study)
    await asyncio.sleep(0.5)
    status = await hub.status(study.study_instance_uid)
    assert [(d["destination"], d["state"]) for d in status["destinations"]] == [
        ("ct-archive", "held")
    ]
    assert not (tmp_path / "ct-archive").exists()
    (held,) = await hub.jobs(state="held")
    assert held["held_by"] == "hold-research"
    r = await hub.post_admin(f"/api/v1/jobs/{held['id']}/release")
    assert r.status_code == 200 and r.json()["state"] == "pending"
    await hub.wait_delivered(study.study_instance_uid)
    assert archived(tmp_path, "ct-archive", study.study_instance_uid) == set(
        study.sop_instance_uids
    )
    r = await hub.post_admin(f"/api/v1/jobs/{held['id']}/release")
    assert r.status_code == 409 and r.json()["code"] == "not_held"


async def test_dead_job_shows_its_reason_and_a_retry_delivers_once_fixed(
    tmp_path: Path, make_hub: Any
) -> None:
    blocked = tmp_path / "archive"
    blocked.write_text("a file where the archive folder should be")
    dests = folders(tmp_path, "archive")
    hub: HubClient = await make_hub(
        hub_settings(tmp_path, dests, forward_max_attempts=2, forward_backoff_max_seconds=0.1)
    )
    study = generate_study(tmp_path / "s", instances=3, seed=6, rows=32, columns=32)
    await hub.send(study)
    status = await hub.wait_for(
        study.study_instance_uid, lambda b: b["destinations"][0]["state"] == "dead", 30, "dead"
    )
    assert status["destinations"][0]["attempts"] == 2
    (dead,) = await hub.jobs(state="dead")
    assert "cannot write" in dead["last_error"]
    health = (await hub.client.get("/api/v1/destinations?probe=true", headers=hub.admin)).json()
    assert health[0]["jobs"]["dead"] == 1
    assert health[0]["probe"]["reachable"] is False
    assert "cannot write" in health[0]["last_error"]

    blocked.unlink()  # someone fixes the archive
    r = await hub.post_admin(f"/api/v1/jobs/{dead['id']}/retry")
    assert r.status_code == 200 and r.json()["attempts"] == 0
    await hub.wait_delivered(study.study_instance_uid)
    assert archived(tmp_path, "archive", study.study_instance_uid) == set(study.sop_instance_uids)
    r = await hub.post_admin(f"/api/v1/jobs/{dead['id']}/retry")
    assert r.status_code == 409  # done jobs are not retried
    health = (await hub.client.get("/api/v1/destinations?probe=true", headers=hub.admin)).json()
    assert health[0]["probe"]["reachable"] is True
    assert health[0]["jobs"] == {"pending": 0, "running": 0, "held": 0, "done": 1, "dead": 0}


async def test_rules_through_the_api_then_dry_run(tmp_path: Path, make_hub: Any) -> None:
    dests = folders(tmp_path, "a", "b")
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests))
    r = await hub.client.get("/api/v1/rules", headers=hub.admin)
    assert r.json()["version"] is None and r.json()["managed_by"] == "api"

    bad = {"rules": [{"name": "x", "destinations": ["nowhere"]}]}
    r = await hub.client.put("/api/v1/rules", json=bad, headers=hub.admin)
    assert r.status_code == 422 and "unknown destination" in r.json()["detail"]
    bad = {"rules": [{"name": "x", "destinations": ["a"], "match": {"modality": 3}}]}
    r = await hub.client.put("/api/v1/rules", json=bad, headers=hub.admin)
    assert r.status_code == 422 and r.json()["code"] == "invalid_rules"

    rules = {
        "rules": [
            {"name": "mr-only", "destinations": ["a"], "match": {"modality": ["MR"]}},
            {
                "name": "north",
                "destinations": ["b"],
                "match": {"facility": "north", "attributes": [{"tag": "Modality", "in": ["CT"]}]},
            },
        ]
    }
    r = await hub.client.put("/api/v1/rules", json=rules, headers=hub.admin)
    assert r.status_code == 200 and r.json()["version"] == 1

    study = generate_study(tmp_path / "s", instances=2, seed=7, rows=32, columns=32)
    await hub.send(study)  # a CT from no facility: matches nothing, no default
    await asyncio.sleep(0.3)
    assert (await hub.status(study.study_instance_uid))["destinations"] == []
    unrouted = (await hub.client.get("/api/v1/rules/unrouted", headers=hub.admin)).json()
    assert [u["study_instance_uid"] for u in unrouted] == [study.study_instance_uid]

    r = await hub.post_admin(
        "/api/v1/rules/dry-run", json={"study_instance_uid": study.study_instance_uid}
    )
    body = r.json()
    assert body["unrouted"] and body["rule_set_version"] == 1
    assert body["facts"]["modalities"] == ["CT"]
    assert {o["rule"]: o["failed"] for o in body["rules"]} == {
        "mr-only": ["modalities ['CT'] have none of ['MR']"],
        "north": ["facility None not in ['north']"],
    }
    # The same study as if it came from "north": it would go to b.
    r = await hub.post_admin(
        "/api/v1/rules/dry-run",
        json={"study_instance_uid": study.study_instance_uid, "facility": "north"},
    )
    assert [d["destination"] for d in r.json()["destinations"]] == ["b"]
    # Proposed rules, and facts given by hand.
    r = await hub.post_admin(
        "/api/v1/rules/dry-run",
        json={
            "facts": {"modalities": ["MR"], "attributes": {"0008,1030": ["BRAIN"]}},
            "rules": {"rules": [{"name": "brain", "destinations": ["b"], "match": {
                "attributes": [{"tag": "StudyDescription", "regex": "BRAIN"}]}}]},
        },
    )  # fmt: skip
    assert [d["destination"] for d in r.json()["destinations"]] == ["b"]
    assert r.json()["facts"]["attributes"] == {"StudyDescription": ["BRAIN"]}
    # Nothing changed: still version 1, still unrouted, no job.
    assert (await hub.client.get("/api/v1/rules", headers=hub.admin)).json()["version"] == 1
    assert await hub.jobs() == []
    history = (await hub.client.get("/api/v1/rules/history", headers=hub.admin)).json()
    assert [h["version"] for h in history] == [1]


async def test_a_rules_file_is_the_truth_and_reloads(
    tmp_path: Path, make_hub: Any, rules_file: Path
) -> None:
    dests = folders(tmp_path, "ct-archive", "mr-archive", "reading-room")
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests, rules_file=rules_file))
    r = await hub.client.get("/api/v1/rules", headers=hub.admin)
    assert r.json()["managed_by"] == "file" and r.json()["version"] == 1
    assert r.json()["source"] == f"file:{rules_file}"
    r = await hub.client.put("/api/v1/rules", json={"rules": []}, headers=hub.admin)
    assert r.status_code == 409 and r.json()["code"] == "rules_managed_by_file"
    r = await hub.post_admin("/api/v1/rules/reload")
    assert r.json()["version"] == 1  # unchanged file, no new version
    rules_file.write_text(RULES.replace('modality = "CT"', 'modality = ["CT", "CR"]'))
    r = await hub.post_admin("/api/v1/rules/reload")
    assert r.json()["version"] == 2
    assert r.json()["rules"]["rules"][0]["match"]["modality"] == ["CT", "CR"]
    rules_file.write_text("[[rules]]\nname = 'broken'\n")
    r = await hub.post_admin("/api/v1/rules/reload")
    assert r.status_code == 422 and "names no destination" in r.json()["detail"]
    assert (await hub.client.get("/api/v1/rules", headers=hub.admin)).json()["version"] == 2


def test_a_bad_rules_file_stops_the_hub_at_start(tmp_path: Path) -> None:
    from relaypacs_hub.main import create_app
    from relaypacs_shared.errors import RoutingError

    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nname = "r"\ndestinations = ["missing"]\n')
    settings = hub_settings(tmp_path, folders(tmp_path, "a"), rules_file=rules)
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RoutingError, match="unknown destination"):
        asyncio.run(start())


async def test_admin_routes_need_the_admin_token(tmp_path: Path, make_hub: Any) -> None:
    hub: HubClient = await make_hub(hub_settings(tmp_path, folders(tmp_path, "a")))
    for path in ("/api/v1/jobs", "/api/v1/rules", "/api/v1/destinations"):
        assert (await hub.client.get(path)).status_code == 401
        r = await hub.client.get(path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert (await hub.client.get(path, headers=hub.admin)).status_code == 200


async def test_retention_removes_bytes_only_after_every_destination_confirmed(
    tmp_path: Path, make_hub: Any
) -> None:
    blocked = tmp_path / "b"
    blocked.write_text("not a folder")
    dests = folders(tmp_path, "a", "b")
    hub: HubClient = await make_hub(
        hub_settings(tmp_path, dests, retention_hours=0, forward_max_attempts=1)
    )
    study = generate_study(tmp_path / "s", instances=2, seed=8, rows=32, columns=32)
    await hub.send(study)
    await hub.wait_for(
        study.study_instance_uid,
        lambda b: {d["state"] for d in b["destinations"]} == {"done", "dead"},
        30,
        "a done and b dead",
    )
    state = hub.state
    worker = ForwardingWorker(state.settings, state.sessionmaker, state.store, {})

    def objects() -> list[Path]:
        return [p for p in state.store.root.glob("sha256/*/*") if p.is_file()]

    assert await worker.sweep_retention() == 0  # b has not confirmed: the bytes stay
    assert len(objects()) == 2
    blocked.unlink()
    (dead,) = await hub.jobs(state="dead")
    await hub.post_admin(f"/api/v1/jobs/{dead['id']}/retry")
    await hub.wait_delivered(study.study_instance_uid)
    assert await worker.sweep_retention() == 1
    assert objects() == []
    async with state.sessionmaker() as session:
        route = await session.scalar(select(StudyRoute))
        assert route is not None and route.purged_at is not None
    assert await worker.sweep_retention() == 0
