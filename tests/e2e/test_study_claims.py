"""A study two facilities send, end to end: two enrolled agents (clinic A, clinic B) and a real
hub with a folder archive. Clinic B's copy of a study clinic A sent is held for the hub's admin
(B's agent says so in the hub's words and keeps it); accepted, it completes from B too;
refused, B's files go to quarantine with the admin's words and every file is accounted for."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs_dev.generate import GeneratedStudy, generate_study
from tests.support.orthanc import free_port
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ADMIN_TOKEN = "admin-" + "c" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Clinics:
    hub: HubProcess
    a: AgentProcess
    b: AgentProcess
    workdir: Path


def _agent(workdir: Path, hub: HubProcess, facility: str) -> AgentProcess:
    with httpx.Client(base_url=hub.url, headers=ADMIN) as c:
        code = c.post("/api/v1/devices/enrollment-codes", json={"facility": facility})
        assert code.status_code == 201, code.text
    env = {**os.environ, "RELAYPACS_AGENT_DATA_DIR": str(workdir / "agent")}
    subprocess.run(
        [sys.executable, "-m", "relaypacs_agent.cli", "enroll", "--hub-url", hub.url,
         "--code", code.json()["code"], "--name", f"agent-{facility}"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    agent = AgentProcess(workdir, hub.url, held_retry_seconds="1")
    agent.start()
    return agent


@pytest.fixture(scope="module")
def clinics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinics]:
    workdir = tmp_path_factory.mktemp("claims")
    archive = workdir / "archive"
    archive.mkdir()
    hub = HubProcess(
        workdir,
        port=free_port(),
        admin_token=ADMIN_TOKEN,
        destinations_file=str(folder_destinations(workdir / "destinations.toml", archive)),
        anonymous_agents="false",
    )
    hub.start()
    a = _agent(workdir / "a", hub, "clinic-a")
    b = _agent(workdir / "b", hub, "clinic-b")
    yield Clinics(hub, a, b, workdir)
    a.terminate()
    b.terminate()
    hub.terminate()


def _drop(study: GeneratedStudy, agent: AgentProcess, name: str) -> None:
    staging = agent.inbox.parent / f".{name}"
    staging.mkdir()
    for f in study.files:
        shutil.copy(f, staging / f.name)
    staging.rename(agent.inbox / name)  # appears at once, whole


def _study(agent: AgentProcess, uid: str) -> dict[str, Any] | None:
    return next((s for s in agent.status()["studies"] if s["study_instance_uid"] == uid), None)


def _delivered(agent: AgentProcess, uid: str) -> bool:
    s = _study(agent, uid)
    return s is not None and s["state"] == "delivered"


def test_held_then_accepted_then_refused(clinics: Clinics, tmp_path: Path) -> None:
    hub, a, b = clinics.hub, clinics.a, clinics.b
    transfer = generate_study(tmp_path / "t", instances=3, seed=41, rows=64, columns=64)
    uid = transfer.study_instance_uid
    _drop(transfer, a, "ct")
    wait_for(lambda: _delivered(a, uid), 90, "clinic A's study delivered")

    # The patient moves to clinic B with a CD of the study: B's agent is told to wait.
    _drop(transfer, b, "cd")
    wait_for(
        lambda: "held until an admin" in ((_study(b, uid) or {}).get("last_error") or ""),
        90,
        "clinic B's agent to show the hub's words",
    )
    claims = httpx.get(hub.url + "/api/v1/study-claims", headers=ADMIN).json()
    assert [(c["facility"], c["owner"], c["state"]) for c in claims] == [
        ("clinic-b", "clinic-a", "held")
    ]
    assert claims[0]["owner_instances"] == 3
    r = httpx.post(
        f"{hub.url}/api/v1/study-claims/{uid}/clinic-b", json={"decision": "accept"}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    wait_for(lambda: _delivered(b, uid), 90, "clinic B's copy delivered once accepted")

    # Another study B sends second, refused: each file lands in B's quarantine with the words.
    clash = generate_study(tmp_path / "c", instances=2, seed=42, rows=64, columns=64)
    cuid = clash.study_instance_uid
    _drop(clash, a, "mr")
    wait_for(lambda: _delivered(a, cuid), 90, "clinic A's second study delivered")
    _drop(clash, b, "clash")
    wait_for(
        lambda: any(
            c["study_instance_uid"] == cuid
            for c in httpx.get(hub.url + "/api/v1/study-claims", headers=ADMIN).json()
        ),
        90,
        "the second claim at the hub",
    )
    r = httpx.post(
        f"{hub.url}/api/v1/study-claims/{cuid}/clinic-b",
        json={"decision": "refuse", "reason": "not this patient: re-export from the modality"},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    wait_for(
        lambda: b.status()["totals"]["quarantine_reasons"].get("hub_study_refused") == 2,
        90,
        "clinic B's refused files in quarantine",
    )
    totals = b.status()["totals"]
    # Every file that entered B is delivered or in quarantine: 3 + 2.
    assert totals["instances_by_state"].get("uploaded", 0) == 3
    assert totals["instances_by_state"].get("refused", 0) == 2
    out = subprocess.run(
        [sys.executable, "-m", "relaypacs_agent.cli", "quarantine", "list"],
        env=b.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "an admin of the hub refused it for this one" in out.stdout, out.stdout
    entry = out.stdout.split()[0]
    out = subprocess.run(
        [sys.executable, "-m", "relaypacs_agent.cli", "quarantine", "show", entry],
        env=b.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "re-export from the modality" in out.stdout, out.stdout
