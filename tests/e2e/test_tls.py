"""TLS between agent and hub: a custom CA trusted, a wrong certificate refused, and plain HTTP
off the loopback refused at the agent's start (issue 6)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from relaypacs_dev.generate import generate_study
from tests.e2e.helpers import archive_files, copy_tree
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = pytest.mark.integration


def _tls_hub(tmp_path: Path, ca: trustme.CA, archive: Path) -> HubProcess:
    """A hub serving HTTPS with a certificate for 127.0.0.1 and localhost issued by ``ca``."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, ca_file = tmp_path / "hub.pem", tmp_path / "hub.key", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    ca.cert_pem.write_to_path(str(ca_file))
    hub = HubProcess(
        tmp_path,
        ca_file=ca_file,
        tls_certfile=str(certfile),
        tls_keyfile=str(keyfile),
        destinations_file=str(folder_destinations(tmp_path / "d.toml", archive)),
    )
    hub.start()
    return hub


def _study(source: Path, seed: int) -> int:
    study = generate_study(source, instances=3, rows=64, columns=64, seed=seed)
    return len(study.files)


def _certificate_error(agent: AgentProcess) -> str:
    def failed() -> str:
        errors = [s.get("last_error") or "" for s in agent.status()["studies"]]
        return next((e for e in errors if "CERTIFICATE_VERIFY_FAILED" in e), "")

    return str(wait_for(failed, 90, "a certificate error in the agent's status", interval=0.5))


def test_custom_ca_delivers_and_default_trust_refuses(tmp_path: Path) -> None:
    ca = trustme.CA()
    archive = tmp_path / "archive"
    hub = _tls_hub(tmp_path, ca, archive)
    assert hub.url.startswith("https://")
    url = f"https://localhost:{hub.port}"
    trusting = AgentProcess(tmp_path / "trusting", url, hub_ca_file=str(tmp_path / "ca.pem"))
    untrusting = AgentProcess(tmp_path / "untrusting", url)  # system trust store only
    try:
        trusting.start()
        untrusting.start()
        n = _study(tmp_path / "good", seed=11)
        _study(tmp_path / "other", seed=12)
        copy_tree(tmp_path / "good", trusting.inbox)
        copy_tree(tmp_path / "other", untrusting.inbox)
        wait_for(
            lambda: trusting.status()["totals"]["studies_by_state"].get("delivered") == 1,
            120,
            "the study delivered over HTTPS",
            interval=0.5,
        )
        assert len(archive_files(archive)) == n
        error = _certificate_error(untrusting)
        assert "certificate" in error.lower()
        assert untrusting.status()["totals"]["studies_by_state"].get("delivered") is None
        assert len(archive_files(archive)) == n  # nothing came through the untrusted agent
    finally:
        assert trusting.terminate() == 0, trusting.log()[-3000:]
        assert untrusting.terminate() == 0, untrusting.log()[-3000:]
        assert hub.terminate() == 0, hub.log()[-3000:]


def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    trusted, rogue = trustme.CA(), trustme.CA()
    trusted.cert_pem.write_to_path(str(tmp_path / "trusted-ca.pem"))
    archive = tmp_path / "archive"
    hub = _tls_hub(tmp_path, rogue, archive)  # the hub's certificate comes from the rogue CA
    agent = AgentProcess(
        tmp_path / "agent",
        f"https://localhost:{hub.port}",
        hub_ca_file=str(tmp_path / "trusted-ca.pem"),
    )
    try:
        agent.start()
        _study(tmp_path / "source", seed=13)
        copy_tree(tmp_path / "source", agent.inbox)
        _certificate_error(agent)
        assert archive_files(archive) == {}
    finally:
        assert agent.terminate() == 0, agent.log()[-3000:]
        assert hub.terminate() == 0, hub.log()[-3000:]


def _agent_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return {
        **os.environ,
        "RELAYPACS_AGENT_DATA_DIR": str(tmp_path / "agent"),
        "RELAYPACS_AGENT_INBOX": str(tmp_path / "inbox"),
        **{f"RELAYPACS_AGENT_{k.upper()}": v for k, v in settings.items()},
    }


def test_agent_refuses_plain_http_off_the_loopback(tmp_path: Path) -> None:
    # Nothing is ever sent to 10.1.2.3: the agent refuses before starting, and the allowed one
    # below has an empty inbox, so it has nothing to send.
    out = subprocess.run(
        [sys.executable, "-m", "relaypacs_agent.cli", "run"],
        env=_agent_env(tmp_path, hub_url="http://10.1.2.3:8080"),
        capture_output=True,
        timeout=60,
    )
    assert out.returncode != 0
    message = out.stderr.decode()
    assert "RELAYPACS_AGENT_HUB_URL" in message
    assert "RELAYPACS_AGENT_ALLOW_INSECURE_HTTP" in message
    assert "10.1.2.3" in message


def test_agent_starts_with_plain_http_when_explicitly_allowed(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, "http://10.1.2.3:8080", allow_insecure_http="true")
    agent.start()
    try:
        wait_for(lambda: "agent_started" in agent.log(), 60, "the agent to start")
        time.sleep(0.5)
        assert agent.alive(), agent.log()[-3000:]
    finally:
        assert agent.terminate() == 0, agent.log()[-3000:]
