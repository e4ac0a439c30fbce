"""tus 1.0 endpoint: ``/api/v1/uploads`` (segments from agents, and any tus client).

Status codes and headers as the protocol says: 412 without a supported ``Tus-Resumable``,
409 on an offset mismatch, 460 on a checksum mismatch, 413 past ``Tus-Max-Size``, 415 without
``application/offset+octet-stream``, ``Cache-Control: no-store`` on HEAD, 404/410 for unknown or
expired uploads. A completed segment is unpacked before the last PATCH is answered.
"""

from __future__ import annotations

import re
from email.utils import format_datetime

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from relaypacs_hub.api.deps import AgentAuth, PublicAccess, State
from relaypacs_hub.api.routes.studies import claim_for_device
from relaypacs_hub.ingest.segments import process_upload
from relaypacs_hub.ingest.tus import UploadGone, UploadLocked, UploadTooLarge, UploadView
from relaypacs_hub.ratelimit import RateLimited, enforce, upload_create_rule
from relaypacs_shared.errors import ChecksumMismatch, OffsetConflict, ProtocolError
from relaypacs_shared.tus import (
    CHECKSUM_ALGORITHMS,
    OFFSET_CONTENT_TYPE,
    STATUS_CHECKSUM_MISMATCH,
    TUS_EXTENSIONS,
    TUS_VERSION,
    decode_metadata,
    encode_metadata,
    parse_checksum,
)

log = structlog.get_logger("relaypacs.hub.tus")
PREFIX = "/api/v1/uploads"
router = APIRouter(prefix=PREFIX, tags=["uploads (tus 1.0)"])


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", **(extra or {})}


def _err(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"code": code, "detail": detail}, status_code=status, headers=_headers(headers)
    )


def _version_ok(request: Request) -> Response | None:
    if request.headers.get("tus-resumable") != TUS_VERSION:
        return _err(
            412,
            "unsupported_version",
            f"Tus-Resumable {TUS_VERSION} is required",
            {"Tus-Version": TUS_VERSION},
        )
    return None


def _int_header(request: Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ProtocolError(f"{name} must be a non-negative integer")
    return int(raw)


def _expires(v: UploadView) -> str:
    from datetime import UTC

    return format_datetime(v.expires_at.replace(tzinfo=UTC), usegmt=True)


def _upload_headers(v: UploadView) -> dict[str, str]:
    h = {"Upload-Offset": str(v.offset), "Upload-Expires": _expires(v)}
    if v.length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(v.length)
    if v.metadata:
        h["Upload-Metadata"] = encode_metadata(v.metadata)
    if v.concat == "partial":
        h["Upload-Concat"] = "partial"
    elif v.concat == "final":
        h["Upload-Concat"] = "final;" + " ".join(f"{PREFIX}/{p}" for p in v.parts)
    return h


@router.options("")
async def options(state: State, _auth: PublicAccess) -> Response:
    """Server capabilities (no authentication, as the protocol expects)."""
    return Response(
        status_code=204,
        headers={
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(TUS_EXTENSIONS),
            "Tus-Max-Size": str(state.settings.upload_max_bytes),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        },
    )


@router.options("/{upload_id}")
async def options_upload(upload_id: str, state: State, _auth: PublicAccess) -> Response:
    """The same capabilities, asked of an upload's URL (its own route, so that the OpenAPI
    schema declares the path parameter)."""
    return await options(state, _auth)


async def _after_complete(state: State, v: UploadView) -> None:
    if v.state == "complete" and v.metadata.get("kind") == "relaypacs-segment":
        await process_upload(
            v.id,
            sessionmaker=state.sessionmaker,
            uploads=state.tus.store,
            store=state.store,
            max_instance_bytes=state.settings.max_instance_bytes,
        )


@router.post("")
async def create(request: Request, state: State, _auth: AgentAuth) -> Response:
    """Creation (+ creation-with-upload, defer-length, concatenation); rate limited per caller."""
    if (bad := _version_ok(request)) is not None:
        return bad
    caller = f"{_auth.kind}:{_auth.name}"
    if _auth.kind == "anonymous":  # no agent credential configured: count per address
        caller += ":" + (request.client.host if request.client else "unknown")
    try:
        await enforce(state.limiter, upload_create_rule(state.settings), caller)
    except RateLimited as exc:
        return _err(
            429, "rate_limited", exc.body["detail"], {"Retry-After": exc.retry_after_header}
        )
    try:
        length = _int_header(request, "upload-length")
        defer = request.headers.get("upload-defer-length")
        metadata = decode_metadata(request.headers.get("upload-metadata"))
        # A device uploads segments of its own facility's studies only.
        if 0 < len(metadata.get("study") or "") <= 64:
            await claim_for_device(state, _auth, metadata["study"])
        concat_raw = request.headers.get("upload-concat", "").strip()
        concat, parts = "none", []
        if concat_raw == "partial":
            concat = "partial"
        elif concat_raw.startswith("final;"):
            concat = "final"
            parts = [u.rstrip("/").rsplit("/", 1)[-1] for u in concat_raw[6:].split()]
            if not all(re.fullmatch(r"[0-9a-f]{32}", p) for p in parts):
                raise ProtocolError("Upload-Concat final lists an unknown upload URL")
        elif concat_raw:
            raise ProtocolError("Upload-Concat must be 'partial' or 'final;<urls>'")
        if concat != "final" and length is None and defer != "1":
            raise ProtocolError("Upload-Length or Upload-Defer-Length: 1 is required")
        v = await state.tus.create(length=length, metadata=metadata, concat=concat, parts=parts)
    except UploadTooLarge as exc:
        return _err(413, "too_large", str(exc))
    except ProtocolError as exc:
        return _err(400, "bad_request", str(exc))
    location = f"{PREFIX}/{v.id}"
    has_body = request.headers.get("content-type", "").startswith(OFFSET_CONTENT_TYPE)
    if has_body and concat != "final":
        resp = await _patch_body(request, state, v.id, 0)
        if resp.status_code != 204:
            # Created, but the first bytes did not make it: the client resumes with HEAD.
            return Response(
                status_code=201, headers=_headers({"Location": location, "Upload-Offset": "0"})
            )
        resp.status_code = 201
        resp.headers["Location"] = location
        return resp
    if v.state == "complete":
        await _after_complete(state, v)
    return Response(status_code=201, headers=_headers({"Location": location, **_upload_headers(v)}))


@router.head("/{upload_id}")
async def head(upload_id: str, request: Request, state: State, _auth: AgentAuth) -> Response:
    """Where the upload stands: ``Upload-Offset`` is the truth after any interruption."""
    if _version_ok(request) is not None:
        return Response(status_code=412, headers={"Tus-Version": TUS_VERSION, **_headers()})
    try:
        v = await state.tus.get(upload_id)
    except UploadGone as exc:
        return Response(status_code=exc.status, headers=_headers())
    return Response(status_code=200, headers=_headers(_upload_headers(v)))


async def _patch_body(request: Request, state: State, upload_id: str, offset: int) -> Response:
    try:
        current = await state.tus.get(upload_id)
        if current.concat == "final":
            raise UploadLocked("a final concatenation cannot be patched")
        checksum_raw = request.headers.get("upload-checksum")
        try:
            checksum = parse_checksum(checksum_raw) if checksum_raw else None
        except ProtocolError as exc:
            return _err(400, "bad_checksum_header", str(exc))
        new_length = _int_header(request, "upload-length")
        length = current.length if current.length is not None else new_length
        limit = (length - offset) if length is not None else state.settings.upload_max_bytes
        chunk, n, _complete = await state.tus.stage(
            request.stream(), checksum, max(limit, 0), upload_id
        )
        try:
            v = await state.tus.patch(upload_id, offset, chunk, n, new_length)
        finally:
            chunk.unlink(missing_ok=True)
    except UploadGone as exc:
        return Response(status_code=exc.status, headers=_headers())
    except ChecksumMismatch as exc:
        return _err(STATUS_CHECKSUM_MISMATCH, "checksum_mismatch", str(exc))
    except OffsetConflict as exc:
        return _err(409, "offset_conflict", str(exc))
    except UploadTooLarge as exc:
        return _err(413, "too_large", str(exc))
    except UploadLocked as exc:
        return _err(403, "forbidden", str(exc))
    except ProtocolError as exc:
        return _err(400, "bad_request", str(exc))
    await _after_complete(state, v)
    return Response(
        status_code=204,
        headers=_headers({"Upload-Offset": str(v.offset), "Upload-Expires": _expires(v)}),
    )


@router.patch("/{upload_id}")
async def patch(upload_id: str, request: Request, state: State, _auth: AgentAuth) -> Response:
    """Append bytes at ``Upload-Offset`` (checksum verified before anything is kept)."""
    if (bad := _version_ok(request)) is not None:
        return bad
    if request.headers.get("content-type", "").split(";")[0].strip() != OFFSET_CONTENT_TYPE:
        return _err(415, "unsupported_media_type", f"Content-Type must be {OFFSET_CONTENT_TYPE}")
    try:
        offset = _int_header(request, "upload-offset")
    except ProtocolError as exc:
        return _err(400, "bad_request", str(exc))
    if offset is None:
        return _err(400, "bad_request", "Upload-Offset is required")
    return await _patch_body(request, state, upload_id, offset)


@router.delete("/{upload_id}")
async def terminate(upload_id: str, request: Request, state: State, _auth: AgentAuth) -> Response:
    """Termination: the upload and its bytes are removed."""
    if (bad := _version_ok(request)) is not None:
        return bad
    try:
        await state.tus.delete(upload_id)
    except UploadGone as exc:
        return Response(status_code=exc.status, headers=_headers())
    return Response(status_code=204, headers=_headers())
