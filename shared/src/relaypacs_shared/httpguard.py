"""Guards for the HTTP servers of RelayPACS (the hub API and the agent's LAN app), both uvicorn.

What they stop:

* **Idle and slow connections** (slowloris): a request head must arrive within
  ``header_timeout`` seconds of the connection (or of its first byte after a keep-alive pause),
  and a request body that stops flowing for ``body_timeout`` seconds ends the connection.
* **Running out of file handles**: at most ``max_connections`` connections are open at once
  (never more than the process' file limit allows, after a reserve for databases and files).
  A new connection beyond the cap closes the oldest connection that has no request in flight
  (an idle or slow sender), so a flood of idle sockets cannot keep real clients out; only when
  every connection is busy with a request is the newcomer answered 503.
* **Log floods**: what the guard sheds is counted and logged once per ``log_every`` seconds,
  and the repeated warnings of asyncio and uvicorn (``socket.accept() out of system resource``,
  ``Invalid HTTP request received.``) are logged once per interval with a count.
* **Big bodies**: ``BodyLimit`` answers 413 (and closes the connection) to a request whose body
  is larger than its route allows, before the application reads it into memory.
* **Sniffing, framing, caching**: ``SecurityHeaders`` puts ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer`` and ``X-Frame-Options: DENY`` on every answer (errors too),
  ``Cache-Control: no-store`` on API answers that do not say otherwise (they carry tokens, study
  states and reports, which no browser or proxy cache should keep), and
  ``Strict-Transport-Security`` when the server itself serves TLS (behind a TLS-terminating
  proxy, the proxy sets it: docs/deploy.md). A route that sets one of these keeps its value.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from relaypacs_shared.netopts import SocketOption
from relaypacs_shared.netopts import apply as apply_options

log = structlog.get_logger("relaypacs.httpguard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# File handles kept free for the database pool, Redis, log files, object store and DICOM files.
FD_RESERVE = 128

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 34\r\n\r\nthe request did not arrive in time\n"
)
_BUSY_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\nretry-after: 5\r\ncontent-length: 39\r\n\r\n"
    b"the server is busy; retry in 5 seconds\n\n"
)


def raise_file_limit() -> int:
    """Raise this process' soft limit of open files to its hard limit; the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_limits(configured: int, file_limit: int | None = None) -> tuple[int, int]:
    """The connection cap and the accept backlog that fit the process' file limit.

    asyncio accepts up to ``backlog`` connections in one go (one turn of its loop) and the
    guard first sees them two turns later (the accept task, then ``connection_made``); a
    displaced connection closes its handle one turn after that. A flood can therefore land a
    burst on each of four turns before the first burst's victims are closed: the cap plus four
    bursts, plus one for slack, must stay under the limit after ``FD_RESERVE``."""
    limit = file_limit if file_limit is not None else raise_file_limit()
    room = max(limit - FD_RESERVE, 64)
    cap = max(16, min(configured, room // 2))
    backlog = max(16, min(2048, (room - cap) // 5))
    return cap, backlog


@dataclass
class GuardStats:
    evicted: int = 0  # idle or slow connections closed to make room for a new one
    refused: int = 0  # new connections answered 503 because every slot was busy
    header_timeouts: int = 0
    body_timeouts: int = 0

    def any(self) -> bool:
        return bool(self.evicted or self.refused or self.header_timeouts or self.body_timeouts)


@dataclass
class ConnectionGuard:
    """The shared state of one server's guarded connections (see the module docstring)."""

    max_connections: int
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    log_every: float = 10.0
    clock: Callable[[], float] = time.monotonic
    name: str = "http"
    # TCP options set on every accepted connection (relaypacs_shared.netopts).
    socket_options: list[SocketOption] = field(default_factory=list)
    open: dict[int, Any] = field(default_factory=dict)
    # Connections with no request in flight, oldest first: the ones a newcomer may displace.
    idle: OrderedDict[int, Any] = field(default_factory=OrderedDict)
    # Connections whose request head has begun (or whose first request is awaited): deadlines.
    heads: OrderedDict[int, float] = field(default_factory=OrderedDict)
    # Connections receiving a request body: when their last bytes arrived.
    bodies: dict[int, float] = field(default_factory=dict)
    stats: GuardStats = field(default_factory=GuardStats)
    _sweeper: asyncio.TimerHandle | None = None
    _last_log: float = 0.0
    peak: int = 0

    def protocol_class(self, base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        """uvicorn's h11 protocol class (``base``: ``uvicorn.protocols.http.h11_impl.H11Protocol``)
        extended with this guard: the ``http`` argument of ``uvicorn.Config``."""
        return type("Guarded" + base.__name__, (GuardedConnection, base), {"guard": self})

    # -- connection lifecycle -------------------------------------------------------------

    def admit(self, conn: Any) -> bool:
        """Register a new connection; False when it must be refused (every slot busy)."""
        if len(self.open) >= self.max_connections:
            victim = next(iter(self.idle.values()), None)
            if victim is None:
                self.stats.refused += 1
                self._maybe_log()
                return False
            self.stats.evicted += 1
            victim.shed(None)
        key = id(conn)
        self.open[key] = conn
        self.peak = max(self.peak, len(self.open))
        self.idle[key] = conn
        self.heads[key] = self.clock() + self.header_timeout
        self._ensure_sweeper(conn.loop)
        return True

    def forget(self, conn: Any) -> None:
        key = id(conn)
        self.open.pop(key, None)
        self.idle.pop(key, None)
        self.heads.pop(key, None)
        self.bodies.pop(key, None)

    def observe(self, conn: Any, got_bytes: bool) -> None:
        """Bring the connection's place in the tables in line with its HTTP state."""
        key = id(conn)
        if key not in self.open:
            return
        theirs = _state(conn.conn.their_state)
        in_flight = conn.cycle is not None and not conn.cycle.response_complete
        now = self.clock()
        if theirs == "IDLE" and not in_flight:
            if key not in self.idle:
                self.idle[key] = conn
            if got_bytes and key not in self.heads:  # a new request head has begun
                self.heads[key] = now + self.header_timeout
            self.bodies.pop(key, None)
            return
        self.idle.pop(key, None)
        self.heads.pop(key, None)
        if theirs == "SEND_BODY":
            if got_bytes or key not in self.bodies:
                self.bodies[key] = now
        else:
            self.bodies.pop(key, None)

    def returned_to_idle(self, conn: Any) -> None:
        """After a response: a keep-alive connection waits (uvicorn's keep-alive timer)."""
        key = id(conn)
        if key in self.open:
            self.heads.pop(key, None)
            self.idle.pop(key, None)
            self.idle[key] = conn  # newest idle at the end
            self.observe(conn, got_bytes=False)

    # -- timeouts -------------------------------------------------------------------------

    def _ensure_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None:
            self._sweeper = loop.call_later(0.5, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = self.clock()
        while self.heads:
            key, deadline = next(iter(self.heads.items()))
            if deadline > now:
                break
            self.heads.pop(key)
            conn = self.open.get(key)
            if conn is not None:
                self.stats.header_timeouts += 1
                conn.shed(_TIMEOUT_408)
        for key, last in list(self.bodies.items()):
            conn = self.open.get(key)
            if conn is None:
                self.bodies.pop(key, None)
            elif now - last > self.body_timeout:
                if conn.flow is not None and conn.flow.read_paused:
                    self.bodies[key] = now  # the application is not reading: not the client's fault
                    continue
                self.bodies.pop(key, None)
                self.stats.body_timeouts += 1
                conn.shed(None)
        self._maybe_log()
        if self.open:
            self._sweeper = loop.call_later(0.5, self._sweep, loop)

    def _maybe_log(self) -> None:
        now = self.clock()
        if not self.stats.any() or now - self._last_log < self.log_every:
            return
        self._last_log = now
        s = self.stats
        log.warning(
            "http_connections_shed",
            server=self.name,
            evicted_idle=s.evicted,
            refused_busy=s.refused,
            header_timeouts=s.header_timeouts,
            body_timeouts=s.body_timeouts,
            open=len(self.open),
            cap=self.max_connections,
        )
        self.stats = GuardStats()


def _state(state: Any) -> str:
    """The name of an h11 state (h11's states are sentinel classes named after themselves)."""
    return getattr(state, "__name__", str(state))


class GuardedConnection:
    """Mixed into uvicorn's h11 protocol by ``ConnectionGuard.protocol_class``: reports the
    connection's life to the guard (uvicorn's ``conn``, ``cycle``, ``flow`` and ``transport``)."""

    guard: ConnectionGuard
    conn: Any
    cycle: Any
    flow: Any
    transport: Any
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if self.guard.socket_options:
            apply_options(transport.get_extra_info("socket"), self.guard.socket_options)
        if not self.guard.admit(self):
            self.transport.write(_BUSY_503)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self.guard.observe(self, got_bytes=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self.guard.returned_to_idle(self)

    def shed(self, answer: bytes | None) -> None:
        """Close this connection now (a timeout, or room for a newcomer)."""
        self.guard.forget(self)
        if self.transport.is_closing():
            return
        if answer is not None and _state(self.conn.our_state) == "IDLE":
            self.transport.write(answer)
            self.transport.close()
        else:
            self.transport.abort()


class RepeatFilter(logging.Filter):
    """Lets one record of each message through per ``every`` seconds, then says how many were
    dropped: a flood of identical warnings costs a line per interval, not a disk."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.msg}"
        now = self.clock()
        last, dropped = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.every:
            self._seen[key] = (last, dropped + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} (and {dropped} more like it in the last {self.every:g} s)"
        return True


_REPEAT_FILTER = RepeatFilter()


def quiet_repeated_server_logs() -> None:
    """Install the repeat filter on the loggers that flood under attack (idempotent)."""
    for name in ("asyncio", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if _REPEAT_FILTER not in logger.filters:
            logger.addFilter(_REPEAT_FILTER)


# -- request body limits ---------------------------------------------------------------------


def _too_large(limit: int) -> tuple[dict[str, Any], bytes]:
    body = (
        '{"code":"request_too_large","detail":"the request body is larger than this route '
        f'accepts ({limit} bytes)"}}'
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, body


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit_for(method, path)`` bytes (None: no limit
    here, for routes that bound the body themselves, such as a tus PATCH bounded by its upload).

    A declared ``Content-Length`` over the limit is refused before anything is read; a chunked
    body is counted as it is read and refused as soon as it passes the limit."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._refuse(send, limit)
                    return
        seen = 0
        started = refused = False

        async def counting_receive() -> Message:
            # Past the limit the application is told the client left (it stops reading) and the
            # client gets the 413, once, on a connection that then closes.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    if not started:
                        await self._refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out already
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, tracking_send)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        start, body = _too_large(limit)
        await send(start)
        await send({"type": "http.response.body", "body": body})


HSTS = b"max-age=31536000; includeSubDomains"
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class SecurityHeaders:
    """The security headers of the module docstring, as an ASGI middleware."""

    def __init__(self, app: ASGIApp, *, hsts: bool, api_prefix: str = "/api/") -> None:
        self.app = app
        self.hsts = hsts
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith(self.api_prefix)

        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = [(k, v) for k, v in _ALWAYS if k not in present]
                if api and b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                if self.hsts and b"strict-transport-security" not in present:
                    extra.append((b"strict-transport-security", HSTS))
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, _send)
