"""`relaypacs-agent enroll` and `renew-credential` against a real hub process; the enrolled agent
then delivers a study with its device credential (the hub requires agent credentials)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from relaypacs_dev.generate import generate_study
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admin-" + "f" * 40
AGENT_TOKEN = "agent-" + "g" * 40  # configured at the hub, never given to the agent


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaypacs_agent.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_enroll_renew_then_deliver_with_the_device_credential(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    dest = folder_destinations(tmp_path / "destinations.toml", archive)
    hub = HubProcess(
        tmp_path,
        destinations_file=str(dest),
        admin_token=ADMIN_TOKEN,
        agent_token=AGENT_TOKEN,
    )
    hub.start()
    agent: AgentProcess | None = None
    try:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = httpx.post(
            hub.url + "/api/v1/devices/enrollment-codes",
            json={"facility": "fac-a", "ttl_minutes": 5},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        code = r.json()["code"]

        agent = AgentProcess(tmp_path, hub.url)
        out = _cli(agent.env, "enroll", "--hub-url", hub.url, "--code", code, "--name", "ct-1")
        assert out.returncode == 0, out.stderr
        cred_file = agent.data_dir / "credential.json"
        assert stat.S_IMODE(cred_file.stat().st_mode) == 0o600
        first = json.loads(cred_file.read_text())
        assert first["facility"] == "fac-a"

        # The code works once.
        again = _cli(agent.env, "enroll", "--hub-url", hub.url, "--code", code)
        assert again.returncode == 1
        assert "used already" in again.stderr

        out = _cli(agent.env, "renew-credential")
        assert out.returncode == 0, out.stderr
        renewed = json.loads(cred_file.read_text())
        assert renewed["device_id"] == first["device_id"]
        assert renewed["secret"] != first["secret"]
        assert stat.S_IMODE(cred_file.stat().st_mode) == 0o600
        old = httpx.post(
            hub.url + "/api/v1/devices/renew",
            headers={"Authorization": f"Bearer rpd_{first['device_id']}.{first['secret']}"},
        )
        assert old.status_code == 401
        # The agent's own audit chain records both changes of its identity, never the secret.
        verify = _cli(agent.env, "audit", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        exported = _cli(agent.env, "audit", "export").stdout
        actions = [json.loads(line)["action"] for line in exported.splitlines() if line.strip()]
        assert actions.count("device.enrolled") == 1
        assert actions.count("device.credential_renewed") == 1
        assert first["secret"] not in exported and renewed["secret"] not in exported

        st = generate_study(tmp_path / "src", instances=3, seed=31, rows=64, columns=64)
        agent.start()
        for f in st.files:
            shutil.copy(f, agent.inbox / f.name)
        wait_for(
            lambda: len(list(archive.glob("*/*/*.dcm"))) == len(st.files),
            90,
            "the study in the archive",
        )
        devices = httpx.get(hub.url + "/api/v1/devices", headers=admin).json()
        assert [d["id"] for d in devices] == [first["device_id"]]
        assert devices[0]["last_seen_at"] is not None
        assert agent.terminate() == 0, agent.log()[-3000:]
        agent = None
    finally:
        if agent is not None and agent.alive():
            agent.kill()
        assert hub.terminate() == 0, hub.log()[-3000:]
