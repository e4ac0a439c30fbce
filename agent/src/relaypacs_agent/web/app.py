"""The agent's LAN API and the PWA it serves.

Every route declares who may call it (:class:`Policy`); ``tests/agent/test_web_route_table.py``
enumerates the routes and checks each against its table, so no route can be forgotten.

Uploads are tus 1.0 (core, creation, creation-with-upload, termination) at ``/api/v1/uploads``:
the offset on disk is the truth, a PATCH cut by a lost Wi-Fi keeps what arrived, and a phone
resumes with HEAD. The file is taken in (validated, spooled or quarantined) at its last byte.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from relaypacs_agent.ingest.pipeline import DiskFull
from relaypacs_agent.reports import ReportInbox
from relaypacs_agent.store.web_batches import WebBatch, WebUpload
from relaypacs_agent.web import wire
from relaypacs_agent.web.auth import UPLOADERS, LanAuth, LanSession, LoginRefused
from relaypacs_agent.web.batches import BatchService, batch_json
from relaypacs_agent.web.reports import (
    events,
    list_reports,
    push_key,
    push_subscribe,
    report_document,
    study_report,
)
from relaypacs_shared import tus
from relaypacs_shared.errors import RelayError, UnknownUpload, UploadBusy
from relaypacs_shared.httpguard import BodyLimit, SecurityHeaders
from relaypacs_shared.refusals import words
from relaypacs_shared.wire import API_PREFIX, problem_of

log = structlog.get_logger("relaypacs.agent.web")

_WRITE_BUFFER = 1024 * 1024
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; worker-src 'self'; manifest-src 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Policy:
    """Who may call a route: ``public``, any LAN user, or a set of roles."""

    name: str
    roles: frozenset[str] = frozenset()
    public: bool = False


PUBLIC = Policy("public", public=True)
ANY_USER = Policy("any user", frozenset({"clinician", "radiographer", "radiologist", "admin"}))
UPLOADER = Policy("clinician, radiographer, admin", UPLOADERS)
ADMIN = Policy("admin", frozenset({"admin"}))


@dataclass
class WebContext:
    auth: LanAuth
    batches: BatchService
    max_upload_bytes: int
    version: str
    facility: Callable[[], str | None]
    status: Callable[[], dict[str, Any]]
    wake_sender: Callable[[], None]
    pwa_dir: Path | None
    last_contact_at: Callable[[], float | None]
    reports: ReportInbox | None = None
    hub: Any = None  # relaypacs_agent.uplink.client.HubClient: relays push subscriptions


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return wire.answer(wire.Problem(code=code, detail=detail), status, headers)


Handler = Callable[[Request, WebContext, LanSession | None], Awaitable[Response]]


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def guarded(policy: Policy, handler: Handler, ctx: WebContext) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        session: LanSession | None = None
        if not policy.public:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                session = await anyio.to_thread.run_sync(ctx.auth.session, token.strip())
            if session is None:
                return problem(401, "unauthorized", "sign in first", {"WWW-Authenticate": "Bearer"})
            if session.role not in policy.roles:
                return problem(403, "forbidden", f"this is for: {policy.name}")
        return await handler(request, ctx, session)

    endpoint.policy = policy  # type: ignore[attr-defined]
    return endpoint


# -- info and login ------------------------------------------------------------------------


async def info(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    return wire.answer(
        wire.AgentInfo(
            product="RelayPACS agent",
            version=ctx.version,
            facility=ctx.facility(),
            hub=_hub_contact(ctx),
            max_upload_bytes=ctx.max_upload_bytes,
        ),
        headers={"Cache-Control": "no-store"},
    )


def _hub_contact(ctx: WebContext) -> wire.HubContact:
    return wire.HubContact(
        reachable=bool(ctx.auth.hub_reachable), last_contact_at=ctx.last_contact_at()
    )


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


async def login(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    body = await _json_body(request)
    if not isinstance(body, dict):
        return problem(422, "invalid", "send JSON with username and password")
    try:
        creds = wire.LoginRequest.model_validate(
            {**body, "totp_code": body.get("totp_code") or None}
        )
    except ValidationError:
        return problem(422, "invalid", "username and password are required")
    try:
        token, session = await anyio.to_thread.run_sync(
            ctx.auth.login, creds.username, creds.password, creds.totp_code, client_of(request)
        )
    except LoginRefused as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return problem(exc.status, exc.code, exc.detail, headers)
    return wire.answer(
        wire.Session(token=token, **_me(session).model_dump()),
        headers={"Cache-Control": "no-store"},
    )


def _me(s: LanSession) -> wire.Me:
    return wire.Me(
        username=s.username,
        role=s.role,
        facilities=s.facilities,
        expires_at=s.expires_at,
        offline=s.offline,
    )


async def me(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    return wire.answer(_me(s))


async def logout(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    await anyio.to_thread.run_sync(ctx.auth.logout, s, client_of(request))
    return Response(status_code=204)


async def agent_status(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    status = await anyio.to_thread.run_sync(ctx.status)
    # The catalogue's totals, disk and hub contact; not every study ever held (that is the CLI's
    # `status --json`), nor their clinical metadata.
    lan = await anyio.to_thread.run_sync(ctx.batches.summary)
    totals = wire.AgentTotals.model_validate(status["totals"])
    body = wire.AgentReport(
        exists=status["exists"],
        totals=totals,
        disk=status.get("disk"),
        hub=_hub_contact(ctx),
        lan=lan,
        # the CLI's words, for the PWA
        reasons={code: wire.ReasonWords(**words(code)) for code in totals.quarantine_reasons},
    )
    return wire.answer(body, headers={"Cache-Control": "no-store"})


async def quarantine(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    """What the agent refused and holds aside, with the reason in words (open entries)."""
    rows = await anyio.to_thread.run_sync(ctx.batches.store.quarantine_entries)
    entries = [
        wire.QuarantineEntry(
            id=r["id"],
            original_name=r["original_name"],
            source=r["source"],
            reason=r["reason"],
            message=r["message"],
            **words(r["reason"]),
            size=r["size"],
            quarantined_at=r["quarantined_at"],
        )
        for r in rows[-500:]
    ]
    return wire.answer(
        wire.QuarantineList(total=len(rows), entries=entries[::-1]),
        headers={"Cache-Control": "no-store"},
    )


# -- batches ---------------------------------------------------------------------------------


def _own(ctx: WebContext, batch_id: str, s: LanSession) -> WebBatch | None:
    row = ctx.batches.batch_row(batch_id)
    if row is None or (row.created_by != s.username and s.role != "admin"):
        return None  # another person's batch is as absent as an unknown one
    return row


async def list_batches(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    who = None if s.role == "admin" and request.query_params.get("all") == "1" else s.username
    batches = await anyio.to_thread.run_sync(ctx.batches.list_batches, who)
    return wire.answer(wire.BatchList(batches=batches), headers={"Cache-Control": "no-store"})


async def create_batch(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    try:
        body = batch_json(await _json_body(request))
    except ValueError as exc:
        return problem(422, "invalid", str(exc))
    view = await anyio.to_thread.run_sync(
        ctx.batches.create_batch, s.username, body, client_of(request)
    )
    return wire.answer(view, 201)


async def get_batch(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    batch_id = request.path_params["batch_id"]
    if _own(ctx, batch_id, s) is None:
        return problem(404, "not_found", "no such upload batch")
    view = await anyio.to_thread.run_sync(ctx.batches.batch_view, batch_id)
    return wire.answer(view, headers={"Cache-Control": "no-store"})


async def send_batch(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    batch_id = request.path_params["batch_id"]
    if _own(ctx, batch_id, s) is None:
        return problem(404, "not_found", "no such upload batch")
    view = await anyio.to_thread.run_sync(
        ctx.batches.send, batch_id, s.username, client_of(request)
    )
    ctx.wake_sender()
    return wire.answer(view)


# -- tus -------------------------------------------------------------------------------------
# The request rules are the shared tus core's (relaypacs_shared.tus, the dialect in docs/tus.md);
# what is the agent's own: a phone's cut PATCH keeps what arrived, and a file is taken in
# (validated, spooled or quarantined) at its last byte.

TUS_EXTENSIONS = ("creation", "creation-with-upload", "termination")


def _tus_limits(ctx: WebContext) -> tus.ServerLimits:
    return tus.ServerLimits(
        max_size=ctx.max_upload_bytes, extensions=TUS_EXTENSIONS, checksum_algorithms=()
    )


def _tus(headers: dict[str, str] | None = None) -> dict[str, str]:
    return tus.base_headers(headers)


def _tus_problem(status: int, code: str, detail: str) -> Response:
    return problem(status, code, detail, _tus())


def _tus_error(exc: RelayError) -> Response:
    """A tus rule broken: the answer from the shared problem table, with the tus headers."""
    status, body = problem_of(exc)
    return JSONResponse(
        body.model_dump(exclude_defaults=True), status_code=status, headers=tus.error_headers(exc)
    )


def _upload_state(row: WebUpload) -> tus.UploadState:
    return tus.UploadState(offset=row.offset, length=row.length)


async def tus_options(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    return Response(status_code=204, headers=_tus(tus.options_headers(_tus_limits(ctx))))


async def tus_create(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    try:
        req = tus.parse_creation(request.headers, _tus_limits(ctx))
    except RelayError as exc:
        return _tus_error(exc)
    assert req.length is not None  # no deferred lengths, no concatenation here
    batch_id = req.metadata.get("batch", "")
    if _own(ctx, batch_id, s) is None:
        return _tus_problem(404, "no_batch", "create the batch first (POST /api/v1/batches)")
    try:
        ctx.batches.ingestor.check_reserve(req.length)
    except DiskFull:
        return _tus_problem(
            507, "disk_full", "the agent's disk is nearly full; ask IT to free space, then retry"
        )
    row = await anyio.to_thread.run_sync(
        ctx.batches.create_upload,
        batch_id,
        s.username,
        req.metadata.get("filename", "upload"),
        req.length,
    )
    headers = _tus({"Location": f"{API_PREFIX}/uploads/{row.id}", "Upload-Offset": "0"})
    if req.has_body:
        resp = _patch_refused(request, ctx, row, 0) or await _append(request, ctx, row)
        headers["Upload-Offset"] = resp.headers.get("Upload-Offset", "0")
    if req.length == 0:
        await _finish(request, ctx, row.id)
    return Response(status_code=201, headers=headers)


def _own_upload(ctx: WebContext, request: Request, s: LanSession) -> WebUpload | None:
    row = ctx.batches.upload(request.path_params["upload_id"])
    if row is None or row.state == "terminated":
        return None
    if row.created_by != s.username and s.role != "admin":
        return None
    return row


async def tus_head(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    row = _own_upload(ctx, request, s)
    if row is None:
        return Response(status_code=404, headers=_tus())
    headers = tus.upload_headers(_upload_state(row))
    if row.outcome:
        headers["X-RelayPACS-Outcome"] = row.outcome
    return Response(status_code=200, headers=headers)


async def tus_patch(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    try:
        tus.require_version(request.headers)
        row = _own_upload(ctx, request, s)
        if row is None:
            raise UnknownUpload("no such upload")
    except RelayError as exc:
        return _tus_error(exc)
    return _patch_refused(request, ctx, row, None) or await _append(request, ctx, row)


_locks: dict[str, anyio.Lock] = {}
# A PATCH whose body stops arriving for this long is treated as a dropped connection: a phone
# that lost its Wi-Fi without a FIN must not hold the upload's lock until TCP gives up.
BODY_IDLE_SECONDS = 20.0


async def _chunks(request: Request) -> Any:
    """The request body, ending quietly at a disconnect or when it stalls."""
    stream = request.stream().__aiter__()
    while True:
        try:
            with anyio.fail_after(BODY_IDLE_SECONDS):
                chunk = await stream.__anext__()
        except (StopAsyncIteration, ClientDisconnect, TimeoutError):
            return
        yield chunk


def _patch_refused(request: Request, ctx: WebContext, row: WebUpload, offset: int | None) -> Any:
    """A PATCH (or a creation's body, ``offset`` 0) against the shared rules: None if it may
    be written, else the answer."""
    try:
        tus.check_patch(
            _upload_state(row), tus.parse_patch(request.headers, _tus_limits(ctx), offset=offset)
        )
    except RelayError as exc:
        return _tus_error(exc)
    return None


async def _append(request: Request, ctx: WebContext, row: WebUpload) -> Response:
    upload_id = row.id
    lock = _locks.setdefault(upload_id, anyio.Lock())
    if lock.locked():
        return _tus_error(UploadBusy("another request is writing this upload; retry"))
    try:
        async with lock:
            return await _append_locked(request, ctx, upload_id)
    finally:
        if not lock.locked():
            _locks.pop(upload_id, None)


async def _append_locked(request: Request, ctx: WebContext, upload_id: str) -> Response:
    row = ctx.batches.upload(upload_id)
    assert row is not None
    if row.state != "open":
        return Response(status_code=204, headers=_tus({"Upload-Offset": str(row.offset)}))
    start, length = row.offset, row.length
    offset = start
    path = ctx.batches.part_path(upload_id)
    too_much = False
    try:
        f = await anyio.to_thread.run_sync(_open_at, path, offset)
    except FileNotFoundError:
        # The file left before its row said so (a crash mid-ingest): settle the row, and let
        # the phone resync from what the agent really holds.
        fixed = await anyio.to_thread.run_sync(ctx.batches.reconcile, upload_id)
        assert fixed is not None
        return Response(status_code=409, headers=_tus({"Upload-Offset": str(fixed.offset)}))
    buf = bytearray()
    reserve = ctx.batches.ingestor.check_reserve

    def write(data: bytes) -> None:
        # The disk reserve holds while bytes arrive, not only when the upload was created:
        # parallel uploads from several phones must not fill the disk between them.
        reserve(len(data))
        f.write(data)
        f.flush()

    try:
        async for chunk in _chunks(request):  # keep what arrived: the phone resumes from it
            if len(chunk) > length - offset - len(buf):
                too_much = True
                break
            buf += chunk
            if len(buf) >= _WRITE_BUFFER:
                await anyio.to_thread.run_sync(write, bytes(buf))
                offset += len(buf)
                buf.clear()
        if too_much:  # a body longer than the upload: none of it counts
            buf.clear()
            offset = start
            await anyio.to_thread.run_sync(f.truncate, start)
        if buf:
            await anyio.to_thread.run_sync(write, bytes(buf))
            offset += len(buf)
        await anyio.to_thread.run_sync(_sync_close, f)
    except (DiskFull, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            f.close()
            raise
        # Keep what was written whole, answer 507 with that offset: the phone keeps its copy
        # and resumes from there once space is freed.
        await anyio.to_thread.run_sync(_keep_upto, f, offset)
        await anyio.to_thread.run_sync(ctx.batches.set_offset, upload_id, offset)
        log.error("lan_upload_disk_full", upload_id=upload_id, offset=offset)
        return problem(
            507,
            "disk_full",
            "the agent's disk is nearly full; ask IT to free space, then retry",
            _tus({"Upload-Offset": str(offset)}),
        )
    except BaseException:
        f.close()
        raise
    if too_much:
        return _tus_problem(413, "too_large", "more bytes than the upload's length")
    if offset < length:
        await anyio.to_thread.run_sync(ctx.batches.set_offset, upload_id, offset)
        return Response(status_code=204, headers=_tus({"Upload-Offset": str(offset)}))
    # The last byte counts only once the file is taken in: until then the offset stays one
    # short, so a phone never drops its copy of a file the agent could not take (disk full).
    return await _finish(request, ctx, upload_id)


async def _finish(request: Request, ctx: WebContext, upload_id: str) -> Response:
    try:
        done = await anyio.to_thread.run_sync(ctx.batches.finish, upload_id, client_of(request))
    except DiskFull:
        return _not_taken(
            ctx,
            upload_id,
            507,
            "disk_full",
            "the agent's disk is nearly full; ask IT to free space, then retry",
        )
    except Exception:
        log.exception("lan_upload_finish_failed", upload_id=upload_id)
        return _not_taken(
            ctx,
            upload_id,
            503,
            "not_taken",
            "the agent could not take the file in; it keeps what arrived, retry in a moment",
        )
    assert done is not None
    headers = _tus({"Upload-Offset": str(done.offset)})
    if done.outcome:
        headers["X-RelayPACS-Outcome"] = done.outcome
    return Response(status_code=204, headers=headers)


def _not_taken(ctx: WebContext, upload_id: str, status: int, code: str, detail: str) -> Response:
    row = ctx.batches.upload(upload_id)
    assert row is not None
    held = max(row.length - 1, 0)
    if row.state == "open":
        ctx.batches.set_offset(upload_id, held)  # the bytes are on disk, fsynced
    return problem(status, code, detail, _tus({"Upload-Offset": str(held)}))


def _open_at(path: Path, offset: int) -> Any:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    f = os.fdopen(fd, "r+b")
    if os.fstat(fd).st_size < offset:
        f.close()
        raise FileNotFoundError(f"{path.name} holds less than its recorded offset")
    f.truncate(offset)  # bytes past the recorded offset were never acknowledged
    f.seek(offset)
    return f


def _keep_upto(f: Any, offset: int) -> None:
    """After a failed write: drop the partial bytes past ``offset`` and close."""
    try:
        with contextlib.suppress(OSError):
            f.flush()
        f.truncate(offset)
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    finally:
        with contextlib.suppress(OSError):
            f.close()


def _sync_close(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


async def tus_delete(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    try:
        tus.require_version(request.headers)
    except RelayError as exc:
        return _tus_error(exc)
    row = _own_upload(ctx, request, s)
    if row is None:
        return Response(status_code=404, headers=_tus())
    if row.state == "done":
        return _tus_problem(409, "already_taken", "this file is already with the agent")
    lock = _locks.setdefault(row.id, anyio.Lock())
    if lock.locked():
        return _tus_error(UploadBusy("this upload is being written; retry"))
    try:
        async with lock:
            if not await anyio.to_thread.run_sync(ctx.batches.terminate, row.id):
                return _tus_problem(409, "already_taken", "this file is already with the agent")
    finally:
        if not lock.locked():
            _locks.pop(row.id, None)
    return Response(status_code=204, headers=_tus())


# -- the PWA ---------------------------------------------------------------------------------


def _html_headers() -> dict[str, str]:
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


async def pwa(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    if ctx.pwa_dir is None or not (ctx.pwa_dir / "index.html").is_file():
        return Response(
            "<!doctype html><title>RelayPACS agent</title><h1>RelayPACS agent</h1>"
            "<p>The upload app is not built: run <code>make pwa</code>.</p>",
            status_code=503,
            media_type="text/html",
        )
    root = ctx.pwa_dir.resolve()
    rel = request.path_params.get("path", "")
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        return problem(404, "not_found", "not found")
    if rel and target.is_file():
        if target.suffix == ".html":
            return FileResponse(target, headers=_html_headers())
        cache = "public, max-age=31536000, immutable" if rel.startswith("assets/") else "no-cache"
        return FileResponse(
            target, headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
        )
    if rel.startswith("api/") or "." in rel.rsplit("/", 1)[-1]:
        return problem(404, "not_found", "not found")
    return FileResponse(root / "index.html", headers=_html_headers())  # the app's own routes


ROUTES: list[tuple[str, list[str], Policy, Handler]] = [
    (API_PREFIX + "/info", ["GET"], PUBLIC, info),
    (API_PREFIX + "/auth/login", ["POST"], PUBLIC, login),
    (API_PREFIX + "/auth/logout", ["POST"], ANY_USER, logout),
    (API_PREFIX + "/auth/me", ["GET"], ANY_USER, me),
    (API_PREFIX + "/status", ["GET"], ADMIN, agent_status),
    (API_PREFIX + "/quarantine", ["GET"], ADMIN, quarantine),
    (API_PREFIX + "/batches", ["GET"], UPLOADER, list_batches),
    (API_PREFIX + "/batches", ["POST"], UPLOADER, create_batch),
    (API_PREFIX + "/batches/{batch_id}", ["GET"], UPLOADER, get_batch),
    (API_PREFIX + "/batches/{batch_id}/send", ["POST"], UPLOADER, send_batch),
    (API_PREFIX + "/uploads", ["OPTIONS"], PUBLIC, tus_options),
    (API_PREFIX + "/uploads", ["POST"], UPLOADER, tus_create),
    (API_PREFIX + "/uploads/{upload_id}", ["OPTIONS"], PUBLIC, tus_options),
    (API_PREFIX + "/uploads/{upload_id}", ["HEAD"], UPLOADER, tus_head),
    (API_PREFIX + "/uploads/{upload_id}", ["PATCH"], UPLOADER, tus_patch),
    (API_PREFIX + "/uploads/{upload_id}", ["DELETE"], UPLOADER, tus_delete),
    (API_PREFIX + "/studies/{study_uid}/report", ["GET"], ANY_USER, study_report),
    (API_PREFIX + "/reports", ["GET"], ANY_USER, list_reports),
    (API_PREFIX + "/reports/{report_id:int}/document", ["GET"], ANY_USER, report_document),
    (API_PREFIX + "/events", ["GET"], ANY_USER, events),
    (API_PREFIX + "/push/key", ["GET"], ANY_USER, push_key),
    (API_PREFIX + "/push/subscriptions", ["POST"], ANY_USER, push_subscribe),
    ("/", ["GET"], PUBLIC, pwa),
    ("/{path:path}", ["GET"], PUBLIC, pwa),
]


JSON_MAX_BYTES = 1024**2


def _body_limit(ctx: WebContext) -> Callable[[str, str], int | None]:
    def limit_for(method: str, path: str) -> int | None:
        if path.startswith(API_PREFIX + "/uploads"):
            if method == "PATCH":
                return None
            if method == "POST":
                return ctx.max_upload_bytes
        return JSON_MAX_BYTES

    return limit_for


def create_web_app(ctx: WebContext, *, tls: bool = False) -> Starlette:
    routes = [
        Route(path, guarded(policy, handler, ctx), methods=methods)
        for path, methods, policy, handler in ROUTES
    ]
    middleware = [
        # nosniff, no framing, no referrer, no caching of API answers (sessions, reports);
        # HSTS when the agent serves TLS itself. Outermost, so a 413 gets them too.
        Middleware(SecurityHeaders, hsts=tls),
        # 413 before a body larger than its route accepts is read; a tus PATCH is bounded by
        # its upload's declared length instead.
        Middleware(BodyLimit, limit_for=_body_limit(ctx)),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.ctx = ctx
    app.state.started = time.time()
    return app
