"""The agent's LAN API and the PWA it serves.

Every route declares who may call it (:class:`Policy`); ``tests/agent/test_web_route_table.py``
enumerates the routes and checks each against its table, so no route can be forgotten.

Uploads are tus 1.0 (core, creation, creation-with-upload, termination) at ``/api/v1/uploads``:
the offset on disk is the truth, a PATCH cut by a lost Wi-Fi keeps what arrived, and a phone
resumes with HEAD. The file is taken in (validated, spooled or quarantined) at its last byte.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from relaypacs_agent.ingest.pipeline import DiskFull
from relaypacs_agent.web.auth import UPLOADERS, LanAuth, LanSession, LoginRefused
from relaypacs_agent.web.batches import BatchService, batch_json

log = structlog.get_logger("relaypacs.agent.web")

TUS_VERSION = "1.0.0"
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII digits only ("²".isdigit() is True)
TUS_EXTENSIONS = "creation,creation-with-upload,termination"
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


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"code": code, "detail": detail}, status_code=status, headers=headers)


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
    return JSONResponse(
        {
            "product": "RelayPACS agent",
            "version": ctx.version,
            "facility": ctx.facility(),
            "hub": {
                "reachable": bool(ctx.auth.hub_reachable),
                "last_contact_at": ctx.last_contact_at(),
            },
            "max_upload_bytes": ctx.max_upload_bytes,
        },
        headers={"Cache-Control": "no-store"},
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
    username, password = body.get("username"), body.get("password")
    code = body.get("totp_code") or None
    if not (
        isinstance(username, str)
        and isinstance(password, str)
        and 0 < len(username) <= 64
        and 0 < len(password) <= 1024
    ) or not (code is None or isinstance(code, str)):
        return problem(422, "invalid", "username and password are required")
    try:
        token, session = await anyio.to_thread.run_sync(
            ctx.auth.login, username, password, code, client_of(request)
        )
    except LoginRefused as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return problem(exc.status, exc.code, exc.detail, headers)
    return JSONResponse(
        {"token": token, **_session_json(session)}, headers={"Cache-Control": "no-store"}
    )


def _session_json(s: LanSession) -> dict[str, Any]:
    return {
        "username": s.username,
        "role": s.role,
        "facilities": s.facilities,
        "expires_at": s.expires_at,
        "offline": s.offline,
    }


async def me(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    return JSONResponse(_session_json(s))


async def logout(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    await anyio.to_thread.run_sync(ctx.auth.logout, s, client_of(request))
    return Response(status_code=204)


async def agent_status(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    status = await anyio.to_thread.run_sync(ctx.status)
    # The catalogue's totals, disk and hub contact; not every study ever held (that is the CLI's
    # `status --json`), nor their clinical metadata.
    body = {k: status.get(k) for k in ("exists", "totals", "disk")}
    body["hub"] = {
        "reachable": bool(ctx.auth.hub_reachable),
        "last_contact_at": ctx.last_contact_at(),
    }
    body["lan"] = await anyio.to_thread.run_sync(ctx.batches.summary)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def quarantine(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    """What the agent refused and holds aside, with the reason in words (open entries)."""
    rows = await anyio.to_thread.run_sync(ctx.batches.store.quarantine_entries)
    entries = [
        {
            "id": r["id"],
            "original_name": r["original_name"],
            "source": r["source"],
            "reason": r["reason"],
            "message": r["message"],
            "size": r["size"],
            "quarantined_at": r["quarantined_at"],
        }
        for r in rows[-500:]
    ]
    return JSONResponse(
        {"total": len(rows), "entries": entries[::-1]}, headers={"Cache-Control": "no-store"}
    )


# -- batches ---------------------------------------------------------------------------------


def _own(ctx: WebContext, batch_id: str, s: LanSession) -> Any:
    row = ctx.batches.batch_row(batch_id)
    if row is None or (row["created_by"] != s.username and s.role != "admin"):
        return None  # another person's batch is as absent as an unknown one
    return row


async def list_batches(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    who = None if s.role == "admin" and request.query_params.get("all") == "1" else s.username
    batches = await anyio.to_thread.run_sync(ctx.batches.list_batches, who)
    return JSONResponse({"batches": batches}, headers={"Cache-Control": "no-store"})


async def create_batch(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    try:
        body = batch_json(await _json_body(request))
    except ValueError as exc:
        return problem(422, "invalid", str(exc))
    view = await anyio.to_thread.run_sync(
        ctx.batches.create_batch, s.username, body, client_of(request)
    )
    return JSONResponse(view, status_code=201)


async def get_batch(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    batch_id = request.path_params["batch_id"]
    if _own(ctx, batch_id, s) is None:
        return problem(404, "not_found", "no such upload batch")
    view = await anyio.to_thread.run_sync(ctx.batches.batch_view, batch_id)
    return JSONResponse(view, headers={"Cache-Control": "no-store"})


async def send_batch(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    batch_id = request.path_params["batch_id"]
    if _own(ctx, batch_id, s) is None:
        return problem(404, "not_found", "no such upload batch")
    view = await anyio.to_thread.run_sync(
        ctx.batches.send, batch_id, s.username, client_of(request)
    )
    ctx.wake_sender()
    return JSONResponse(view)


# -- tus -------------------------------------------------------------------------------------


def _tus(headers: dict[str, str] | None = None) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", **(headers or {})}


def _tus_problem(status: int, code: str, detail: str) -> Response:
    return problem(status, code, detail, _tus())


def parse_upload_metadata(raw: str) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (tus 1.0 creation)."""
    out: dict[str, str] = {}
    for pair in raw.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"Upload-Metadata value of {key!r} is not base64 UTF-8") from exc
    return out


async def tus_options(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    return Response(
        status_code=204,
        headers=_tus(
            {
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": TUS_EXTENSIONS,
                "Tus-Max-Size": str(ctx.max_upload_bytes),
            }
        ),
    )


def _version_ok(request: Request) -> bool:
    return request.headers.get("tus-resumable") == TUS_VERSION


async def tus_create(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    if not _version_ok(request):
        return Response(status_code=412, headers={"Tus-Version": TUS_VERSION})
    raw_length = request.headers.get("upload-length")
    if raw_length is None or not _DIGITS.fullmatch(raw_length):
        return _tus_problem(400, "invalid", "Upload-Length is required (no deferred lengths)")
    length = int(raw_length)
    if length > ctx.max_upload_bytes:
        return _tus_problem(413, "too_large", "this file is larger than the agent accepts")
    try:
        meta = parse_upload_metadata(request.headers.get("upload-metadata", ""))
    except ValueError as exc:
        return _tus_problem(400, "invalid", str(exc))
    batch_id = meta.get("batch", "")
    if _own(ctx, batch_id, s) is None:
        return _tus_problem(404, "no_batch", "create the batch first (POST /api/v1/batches)")
    try:
        ctx.batches.ingestor.check_reserve(length)
    except DiskFull:
        return _tus_problem(
            507, "disk_full", "the agent's disk is nearly full; ask IT to free space, then retry"
        )
    row = await anyio.to_thread.run_sync(
        ctx.batches.create_upload, batch_id, s.username, meta.get("filename", "upload"), length
    )
    headers = _tus({"Location": f"/api/v1/uploads/{row['id']}", "Upload-Offset": "0"})
    if request.headers.get("content-type") == "application/offset+octet-stream":
        resp = await _append(request, ctx, row)  # creation-with-upload
        headers["Upload-Offset"] = resp.headers.get("Upload-Offset", "0")
    if length == 0:
        await _finish(request, ctx, row["id"])
    return Response(status_code=201, headers=headers)


def _own_upload(ctx: WebContext, request: Request, s: LanSession) -> Any:
    row = ctx.batches.upload(request.path_params["upload_id"])
    if row is None or row["state"] == "terminated":
        return None
    if row["created_by"] != s.username and s.role != "admin":
        return None
    return row


async def tus_head(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    row = _own_upload(ctx, request, s)
    if row is None:
        return Response(status_code=404, headers=_tus())
    headers = _tus({"Upload-Offset": str(row["offset"]), "Upload-Length": str(row["length"])})
    if row["outcome"]:
        headers["X-RelayPACS-Outcome"] = row["outcome"]
    return Response(status_code=200, headers=headers)


async def tus_patch(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    if not _version_ok(request):
        return Response(status_code=412, headers={"Tus-Version": TUS_VERSION})
    row = _own_upload(ctx, request, s)
    if row is None:
        return _tus_problem(404, "not_found", "no such upload")
    if request.headers.get("content-type") != "application/offset+octet-stream":
        return _tus_problem(415, "bad_content_type", "use application/offset+octet-stream")
    raw_offset = request.headers.get("upload-offset", "")
    if not _DIGITS.fullmatch(raw_offset) or int(raw_offset) != row["offset"]:
        return Response(
            status_code=409, headers=_tus({"Upload-Offset": str(row["offset"])})
        )  # resync with HEAD
    declared = request.headers.get("content-length", "")
    if _DIGITS.fullmatch(declared) and row["offset"] + int(declared) > row["length"]:
        return _tus_problem(413, "too_large", "more bytes than the upload's length")
    return await _append(request, ctx, row)


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


async def _append(request: Request, ctx: WebContext, row: Any) -> Response:
    upload_id = row["id"]
    lock = _locks.setdefault(upload_id, anyio.Lock())
    if lock.locked():
        return _tus_problem(423, "busy", "another request is writing this upload; retry")
    try:
        async with lock:
            return await _append_locked(request, ctx, upload_id)
    finally:
        if not lock.locked():
            _locks.pop(upload_id, None)


async def _append_locked(request: Request, ctx: WebContext, upload_id: str) -> Response:
    row = ctx.batches.upload(upload_id)
    if row["state"] != "open":
        return Response(status_code=204, headers=_tus({"Upload-Offset": str(row["offset"])}))
    start, length = row["offset"], row["length"]
    offset = start
    path = ctx.batches.part_path(upload_id)
    too_much = False
    try:
        f = await anyio.to_thread.run_sync(_open_at, path, offset)
    except FileNotFoundError:
        # The file left before its row said so (a crash mid-ingest): settle the row, and let
        # the phone resync from what the agent really holds.
        fixed = await anyio.to_thread.run_sync(ctx.batches.reconcile, upload_id)
        return Response(status_code=409, headers=_tus({"Upload-Offset": str(fixed["offset"])}))
    buf = bytearray()
    try:
        async for chunk in _chunks(request):  # keep what arrived: the phone resumes from it
            if len(chunk) > length - offset - len(buf):
                too_much = True
                break
            buf += chunk
            if len(buf) >= _WRITE_BUFFER:
                await anyio.to_thread.run_sync(f.write, bytes(buf))
                offset += len(buf)
                buf.clear()
        if too_much:  # a body longer than the upload: none of it counts
            buf.clear()
            offset = start
            await anyio.to_thread.run_sync(f.truncate, start)
        if buf:
            await anyio.to_thread.run_sync(f.write, bytes(buf))
            offset += len(buf)
        await anyio.to_thread.run_sync(_sync_close, f)
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
    headers = _tus({"Upload-Offset": str(done["offset"])})
    if done["outcome"]:
        headers["X-RelayPACS-Outcome"] = done["outcome"]
    return Response(status_code=204, headers=headers)


def _not_taken(ctx: WebContext, upload_id: str, status: int, code: str, detail: str) -> Response:
    row = ctx.batches.upload(upload_id)
    held = max(row["length"] - 1, 0)
    if row["state"] == "open":
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


def _sync_close(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


async def tus_delete(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    if not _version_ok(request):
        return Response(status_code=412, headers={"Tus-Version": TUS_VERSION})
    row = _own_upload(ctx, request, s)
    if row is None:
        return Response(status_code=404, headers=_tus())
    if row["state"] == "done":
        return _tus_problem(409, "already_taken", "this file is already with the agent")
    lock = _locks.setdefault(row["id"], anyio.Lock())
    if lock.locked():
        return _tus_problem(423, "busy", "this upload is being written; retry")
    try:
        async with lock:
            if not await anyio.to_thread.run_sync(ctx.batches.terminate, row["id"]):
                return _tus_problem(409, "already_taken", "this file is already with the agent")
    finally:
        if not lock.locked():
            _locks.pop(row["id"], None)
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
    ("/api/v1/info", ["GET"], PUBLIC, info),
    ("/api/v1/auth/login", ["POST"], PUBLIC, login),
    ("/api/v1/auth/logout", ["POST"], ANY_USER, logout),
    ("/api/v1/auth/me", ["GET"], ANY_USER, me),
    ("/api/v1/status", ["GET"], ADMIN, agent_status),
    ("/api/v1/quarantine", ["GET"], ADMIN, quarantine),
    ("/api/v1/batches", ["GET"], UPLOADER, list_batches),
    ("/api/v1/batches", ["POST"], UPLOADER, create_batch),
    ("/api/v1/batches/{batch_id}", ["GET"], UPLOADER, get_batch),
    ("/api/v1/batches/{batch_id}/send", ["POST"], UPLOADER, send_batch),
    ("/api/v1/uploads", ["OPTIONS"], PUBLIC, tus_options),
    ("/api/v1/uploads", ["POST"], UPLOADER, tus_create),
    ("/api/v1/uploads/{upload_id}", ["OPTIONS"], PUBLIC, tus_options),
    ("/api/v1/uploads/{upload_id}", ["HEAD"], UPLOADER, tus_head),
    ("/api/v1/uploads/{upload_id}", ["PATCH"], UPLOADER, tus_patch),
    ("/api/v1/uploads/{upload_id}", ["DELETE"], UPLOADER, tus_delete),
    ("/", ["GET"], PUBLIC, pwa),
    ("/{path:path}", ["GET"], PUBLIC, pwa),
]


def create_web_app(ctx: WebContext) -> Starlette:
    routes = [
        Route(path, guarded(policy, handler, ctx), methods=methods)
        for path, methods, policy, handler in ROUTES
    ]
    app = Starlette(routes=routes)
    app.state.ctx = ctx
    app.state.started = time.time()
    return app
