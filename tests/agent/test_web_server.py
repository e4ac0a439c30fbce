"""The LAN web app as the agent runs it: uvicorn in a thread, HTTPS with the facility's
certificate, and a clear failure at start when its port is taken."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from relaypacs_agent.config import AgentSettings
from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.store.db import Store
from relaypacs_agent.web.server import WebServer
from tests.agent.webfix import FakeHub
from tests.support.orthanc import free_port


class _Client:
    """The hub as the web side sees it: verifiers, TOTP step claims and a health probe."""

    def __init__(self) -> None:
        self.hub = FakeHub()

    def verifiers(self) -> dict[str, Any]:
        return self.hub.verifiers()

    def claim_totp_step(self, username: str, step: int) -> bool:
        return self.hub.claim_totp_step(username, step)

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _server(tmp_path: Path, **settings: Any) -> tuple[WebServer, Store]:
    s = AgentSettings(data_dir=tmp_path / "agent", web_host="127.0.0.1", **settings)
    store = Store(s.db_path)
    ingestor = Ingestor(
        store,
        spool_dir=s.spool_dir,
        quarantine_dir=s.quarantine_dir,
        max_instance_bytes=s.max_instance_bytes,
    )
    return WebServer(s, store, ingestor, client=_Client()), store  # type: ignore[arg-type]


def test_https_with_the_facility_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "agent.clinic.example")
    cert_file, key_file, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    web, store = _server(tmp_path, web_port=port, web_tls_cert=cert_file, web_tls_key=key_file)
    stop = threading.Event()
    web.start(stop)
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        url = f"https://127.0.0.1:{port}/api/v1/info"
        # The socket is bound before start() returns: no wait needed.
        r = httpx.get(url, verify=ctx, timeout=10)
        assert r.status_code == 200 and r.json()["product"] == "RelayPACS agent"
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=10)  # the system store does not know the clinic's CA
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://127.0.0.1:{port}/api/v1/info", timeout=10)  # no plain HTTP
    finally:
        stop.set()
        web.stop()
        store.close()


def test_a_taken_port_stops_the_start_with_an_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        web, store = _server(tmp_path, web_port=port)
        try:
            with pytest.raises(OSError):
                web.start(threading.Event())
        finally:
            store.close()
