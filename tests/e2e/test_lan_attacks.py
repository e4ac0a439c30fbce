"""Connection attacks against a real agent's LAN web app (``relaypacs-agent run`` with its web
port, uvicorn behind the same connection guard as the hub), enrolled at a real hub: thousands of
idle sockets from someone on the facility's Wi-Fi, slow request heads and bodies, an oversized
body; and a LAN login by a real user (verifiers synced from the hub) that still answers."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.attacks import HUGE_LOGIN, STALLED_LOGIN, idle_socket, send_until_closed
from tests.support.orthanc import free_port
from tests.support.processes import AgentProcess, HubProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FILE_LIMIT = 1024  # the agent's file handles: 2,000 idle sockets exhaust them without a guard
IDLE_SOCKETS = 2000
ANSWER_SECONDS = 2.5  # on a shared 2-core CI machine (see test_http_attacks.py)
ADMIN_TOKEN = "admin-" + "f" * 40
PASSWORD = "LAN-attack-passw0rd"


@dataclass
class Lan:
    hub: HubProcess
    agent: AgentProcess
    url: str
    port: int


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4000:  # this test process holds the attacking sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    workdir = tmp_path_factory.mktemp("lan-attacked")
    hub = HubProcess(workdir, admin_token=ADMIN_TOKEN, worker_enabled="false")
    hub.start()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=hub.url, headers=admin) as c:
        r = c.post(
            "/api/v1/users",
            json={"username": "nurse", "password": PASSWORD, "role": "clinician",
                  "facilities": ["north"]},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        code = c.post("/api/v1/devices/enrollment-codes", json={"facility": "north"})
        assert code.status_code == 201, code.text
    env = {**os.environ, "RELAYPACS_AGENT_DATA_DIR": str(workdir / "agent")}
    subprocess.run(
        [sys.executable, "-m", "relaypacs_agent.cli", "enroll", "--hub-url", hub.url,
         "--code", code.json()["code"], "--name", "lan-attacked"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    agent = AgentProcess(
        workdir,
        hub.url,
        prefix=["prlimit", f"--nofile={FILE_LIMIT}:{FILE_LIMIT}", "--"],
        web_port=str(port),
        web_host="127.0.0.1",
        web_max_connections="300",
        web_header_timeout_seconds="2",
        web_body_timeout_seconds="2",
    )
    agent.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url + "/api/v1/info"), 30, "the agent's web app")
    wait_for(
        lambda: httpx.get(url + "/api/v1/info").json()["hub"]["reachable"],
        30,
        "the agent to reach the hub",
    )
    yield Lan(hub, agent, url, port)
    agent.terminate()
    hub.terminate()


def _idle_socket(port: int) -> socket.socket:
    return idle_socket(port, "/api/v1/info")


def test_thousands_of_idle_connections_do_not_keep_a_clinician_out(lan: Lan) -> None:
    log_before = len(lan.agent.log())
    sockets = [_idle_socket(lan.port) for _ in range(IDLE_SOCKETS)]
    try:
        t0 = time.monotonic()
        r = httpx.get(lan.url + "/api/v1/info", timeout=5)
        info_s = time.monotonic() - t0
        assert r.status_code == 200
        assert info_s < ANSWER_SECONDS, f"/api/v1/info took {info_s:.1f} s under attack"
        t0 = time.monotonic()
        r = httpx.post(
            lan.url + "/api/v1/auth/login",
            json={"username": "nurse", "password": PASSWORD},
            timeout=5,
        )
        login_s = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert login_s < ANSWER_SECONDS, f"LAN login took {login_s:.1f} s under attack"
        sockets += [_idle_socket(lan.port) for _ in range(500)]
        assert httpx.get(lan.url + "/api/v1/info", timeout=5).status_code == 200
    finally:
        for s in sockets:
            s.close()
    assert lan.agent.alive()
    log = lan.agent.log()
    grown = len(log) - log_before
    assert grown < 20_000, f"the agent's log grew {grown} bytes under the attack"
    assert "Too many open files" not in log, log[-3000:]
    wait_for(lambda: "http_connections_shed" in lan.agent.log(), 15, "the shed summary")


def test_a_slow_request_head_gets_408(lan: Lan) -> None:
    s = _idle_socket(lan.port)
    s.settimeout(10)
    t0 = time.monotonic()
    answer = s.recv(200)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - t0 < 6
    s.close()


def test_a_stalled_login_body_ends_the_connection(lan: Lan) -> None:
    t0 = time.monotonic()
    data = send_until_closed(lan.port, STALLED_LOGIN)
    assert time.monotonic() - t0 < 8
    assert b"200 OK" not in data


def test_a_declared_huge_login_body_is_refused_before_it_is_read(lan: Lan) -> None:
    answer = send_until_closed(lan.port, HUGE_LOGIN)
    assert answer.startswith(b"HTTP/1.1 413"), answer
