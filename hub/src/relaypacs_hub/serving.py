"""How the hub's HTTP server runs: uvicorn with the connection guard, the body limits of each
route, and logs that do not flood (``relaypacs_shared.httpguard``; docs/security.md)."""

from __future__ import annotations

import re
import signal
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from relaypacs_hub.config import HubSettings
from relaypacs_shared.httpguard import (
    ConnectionGuard,
    connection_limits,
    quiet_repeated_server_logs,
)
from relaypacs_shared.netopts import supported_options

_INSTANCE_PUT = re.compile(r"^/api/v1/studies/[^/]+/instances/[^/]+/?$")
_MANIFEST = re.compile(r"^/api/v1/studies/[^/]+/(manifest|commit)/?$")
_REPORT_POST = re.compile(r"^/api/v1/studies/[^/]+/reports/?$")
_UPLOADS = "/api/v1/uploads"


def body_limit(settings: HubSettings) -> Any:
    """The largest body each route accepts, for ``BodyLimit``: None where the route bounds the
    body itself (a tus PATCH may not pass its upload's declared length)."""

    def limit_for(method: str, path: str) -> int | None:
        if path.startswith(_UPLOADS):
            if method == "PATCH":
                return None
            if method == "POST":  # creation-with-upload carries the first bytes
                return settings.upload_max_bytes
            return settings.request_max_bytes
        if method == "PUT" and _INSTANCE_PUT.match(path):
            return settings.max_instance_bytes
        if method == "POST" and _MANIFEST.match(path):
            return settings.manifest_max_bytes
        if method == "POST" and _REPORT_POST.match(path):
            return settings.report_max_bytes
        return settings.request_max_bytes

    return limit_for


def guard_for(settings: HubSettings) -> tuple[ConnectionGuard, int]:
    """The connection guard and the accept backlog for the hub's file limit."""
    cap, backlog = connection_limits(settings.http_max_connections)
    guard = ConnectionGuard(
        max_connections=cap,
        header_timeout=settings.http_header_timeout_seconds,
        body_timeout=settings.http_body_timeout_seconds,
        name="hub",
        socket_options=supported_options(settings.tcp_rto_max_ms, settings.tcp_rto_min_ms),
    )
    return guard, backlog


def uvicorn_config(app: Any, settings: HubSettings, host: str, port: int) -> uvicorn.Config:
    """The uvicorn configuration of ``relaypacs-hub serve``."""
    quiet_repeated_server_logs()
    guard, backlog = guard_for(settings)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guard.protocol_class(H11Protocol),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # Longer than the agents' 60 s: a closing hub side never races an agent's next request,
        # and a lossy link is spared new handshakes. Idle connections are displaced when the
        # connection cap is reached (relaypacs_shared.httpguard).
        timeout_keep_alive=75,
        backlog=backlog,
        # uvicorn's own header identifies the server software: not needed by anyone.
        server_header=False,
        # HTTPS when given a certificate (RELAYPACS_HUB_TLS_CERTFILE and _KEYFILE, both or none).
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
    )


class HubServer(uvicorn.Server):
    """uvicorn's server, but one Ctrl-C that arrives twice (from the terminal to the process
    group and forwarded again by a launcher such as ``uv run``) is one graceful stop, not a forced
    exit that would skip the shutdown of the worker and the database; a second Ctrl-C a second or
    more later still forces."""

    _first_stop: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if sig == signal.SIGINT and self._first_stop is not None and now - self._first_stop < 1.0:
            return
        if self._first_stop is None:
            self._first_stop = now
        super().handle_exit(sig, frame)
