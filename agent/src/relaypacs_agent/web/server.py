"""Runs the LAN web app (uvicorn, in a thread of the agent) and keeps the login verifiers and
the hub's reachability fresh in another."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from relaypacs_agent.config import AgentSettings
from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.reports import ReportInbox
from relaypacs_agent.status import read_status
from relaypacs_agent.store.db import Store
from relaypacs_agent.uplink.client import HubClient
from relaypacs_agent.uplink.credential import CredentialFile, credential_path
from relaypacs_agent.web.app import WebContext, create_web_app
from relaypacs_agent.web.auth import LanAuth
from relaypacs_agent.web.batches import BatchService
from relaypacs_shared.httpguard import (
    ConnectionGuard,
    connection_limits,
    quiet_repeated_server_logs,
)

log = structlog.get_logger("relaypacs.agent.web")

# An upload nobody touched for this long is dropped (its phone never came back to finish it).
UPLOAD_IDLE_DAYS = 7


def find_pwa_dir(configured: Path | None) -> Path | None:
    """The built PWA: the configured folder, else ``pwa/dist`` of a source checkout."""
    if configured is not None:
        return configured
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "pwa" / "dist"
        if (candidate / "index.html").is_file():
            return candidate
    return None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _version() -> str:
    try:
        return version("relaypacs-agent")
    except PackageNotFoundError:
        return "0"


class WebServer:
    def __init__(
        self,
        settings: AgentSettings,
        store: Store,
        ingestor: Ingestor,
        *,
        wake_sender: Any = None,
        client: HubClient | None = None,
        reports: ReportInbox | None = None,
    ) -> None:
        self.settings = settings
        self.client = client or HubClient(
            settings.hub_url,
            token=settings.hub_token.get_secret_value() if settings.hub_token else None,
            timeout=10.0,
            ca_file=settings.hub_ca_file,
            credential_file=credential_path(settings.data_dir),
        )
        self._credential = CredentialFile(credential_path(settings.data_dir))
        self.last_contact_at: float | None = None
        self.auth = LanAuth(
            store,
            fetch_verifiers=self.client.verifiers,
            claim_totp_step=self.client.claim_totp_step,
            facility=self.facility,
            session_seconds=settings.web_session_hours * 3600,
            sync_seconds=settings.verifier_sync_seconds,
        )
        self.batches = BatchService(
            store, ingestor, settings.incoming_dir / "pwa", facility=self.facility
        )
        self.ctx = WebContext(
            auth=self.auth,
            batches=self.batches,
            max_upload_bytes=settings.max_instance_bytes,
            version=_version(),
            facility=self.facility,
            status=lambda: read_status(settings.db_path, settings.min_free_bytes),
            wake_sender=(lambda: wake_sender.set()) if wake_sender is not None else (lambda: None),
            pwa_dir=find_pwa_dir(settings.pwa_dir),
            last_contact_at=lambda: self.last_contact_at,
            reports=reports,
            hub=self.client,
        )
        self.app = create_web_app(self.ctx, tls=settings.web_tls_cert is not None)
        self.server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []

    def facility(self) -> str | None:
        # Asked on every signed-in request: the file is read again only when it changes.
        cred = self._credential.current()
        return cred.facility if cred is not None and cred.facility else None

    def start(self, stop: threading.Event) -> None:
        recovered = self.batches.recover()
        if recovered:
            log.info("lan_uploads_recovered", uploads=recovered)
        # Idle and slow connections, file handles and log floods (docs/security.md).
        quiet_repeated_server_logs()
        cap, backlog = connection_limits(self.settings.web_max_connections)
        guard = ConnectionGuard(
            max_connections=cap,
            header_timeout=self.settings.web_header_timeout_seconds,
            body_timeout=self.settings.web_body_timeout_seconds,
            name="agent-web",
        )
        config = uvicorn.Config(
            self.app,
            host=self.settings.web_host,
            port=self.settings.web_port,
            ssl_certfile=str(self.settings.web_tls_cert) if self.settings.web_tls_cert else None,
            ssl_keyfile=str(self.settings.web_tls_key) if self.settings.web_tls_key else None,
            log_config=None,
            access_log=False,  # paths carry nothing personal, but file names may: none logged
            lifespan="off",
            timeout_keep_alive=30,
            http=guard.protocol_class(H11Protocol),
            server_header=False,
            backlog=backlog,
        )
        if not self.settings.web_tls_cert and not _loopback(self.settings.web_host):
            # Allowed (a pilot on a closed LAN), but said loudly: passwords cross the LAN in
            # clear and phones will not run the offline service worker over plain HTTP.
            log.warning(
                "web_without_tls",
                host=self.settings.web_host,
                advice="set RELAYPACS_AGENT_WEB_TLS_CERT and RELAYPACS_AGENT_WEB_TLS_KEY",
            )
        self.server = uvicorn.Server(config)
        # Bind here, so a port already taken stops the agent with a clear error at start
        # instead of a web thread that quietly died.
        sock = socket.create_server(
            (self.settings.web_host, self.settings.web_port),
            family=socket.AF_INET6 if ":" in self.settings.web_host else socket.AF_INET,
            reuse_port=False,
        )
        web = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="web", daemon=True
        )
        keeper = threading.Thread(
            target=self._keep_fresh, args=(stop,), name="web-sync", daemon=True
        )
        self._threads = [web, keeper]
        web.start()
        keeper.start()
        log.info(
            "web_started",
            host=self.settings.web_host,
            port=self.settings.web_port,
            tls=bool(self.settings.web_tls_cert),
            pwa=self.ctx.pwa_dir is not None,
        )

    @property
    def threads(self) -> list[threading.Thread]:
        """The server's threads (the HTTP server and the verifier refresher), for the watchdog."""
        return list(getattr(self, "_threads", []))

    def _keep_fresh(self, stop: threading.Event) -> None:
        next_sync = 0.0
        next_sweep = 0.0
        while not stop.is_set():
            try:  # one bad answer must not end the refreshes (removed users would stay)
                if self.client.healthy():
                    self.last_contact_at = time.time()
                    due = time.monotonic() >= next_sync or self.auth.hub_reachable is not True
                    if due and self.auth.sync():
                        next_sync = time.monotonic() + self.settings.verifier_sync_seconds
                else:
                    self.auth.hub_reachable = False
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + 3600
                    dropped = self.batches.expire(UPLOAD_IDLE_DAYS * 86400)
                    if dropped:
                        log.info("lan_uploads_expired", uploads=dropped)
            except Exception:
                log.exception("web_keeper_failed")
            stop.wait(5.0)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        for t in self._threads:
            t.join(timeout=10)
        self.client.close()
