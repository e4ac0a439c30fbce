"""tus 1.0 endpoint: ``/api/v1/uploads`` (segments from agents and from people uploading straight
to the hub, and any tus client).

The request rules are the shared tus core's (``relaypacs_shared.tus``, the dialect in
``docs/tus.md``); errors become answers in ``relaypacs_hub.api.problems``. A completed segment is
unpacked before the last PATCH is answered. Each upload belongs to the caller that created it:
to anybody else (another device, another person of the same facility) it does not exist.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from relaypacs_hub import metrics
from relaypacs_hub.api.deps import Principal, PublicAccess, State, Uploader, claim_upload
from relaypacs_hub.ingest.segments import process_upload
from relaypacs_hub.ingest.tus import UploadView
from relaypacs_hub.ratelimit import enforce, upload_create_rule
from relaypacs_shared import tus
from relaypacs_shared.dicom import check_uid
from relaypacs_shared.errors import DicomValidationError, ProtocolError
from relaypacs_shared.wire import API_PREFIX

PREFIX = f"{API_PREFIX}/uploads"
router = APIRouter(prefix=PREFIX, tags=["uploads (tus 1.0)"])


def owner_of(who: Principal) -> str | None:
    """Whose upload this is: the enrolled device, else the user or token; None in the open
    development mode (no credential at all)."""
    if who.device_id is not None:
        return f"device:{who.device_id}"
    if who.kind == "anonymous":
        return None
    return f"{who.kind}:{who.name}"


def _limits(state: State) -> tus.ServerLimits:
    return tus.ServerLimits(max_size=state.settings.upload_max_bytes)


def _headers(v: UploadView) -> dict[str, str]:
    return tus.upload_headers(
        v.tus,
        expires_at=v.expires_at,
        metadata=v.metadata,
        part_urls=tuple(f"{PREFIX}/{p}" for p in v.parts),
    )


@router.options("")
async def options(state: State, _auth: PublicAccess) -> Response:
    """Server capabilities (no authentication, as the protocol expects)."""
    return Response(status_code=204, headers=tus.options_headers(_limits(state)))


@router.options("/{upload_id}")
async def options_upload(upload_id: str, state: State, _auth: PublicAccess) -> Response:
    """The same capabilities, asked of an upload's URL (its own route, so that the OpenAPI
    schema declares the path parameter)."""
    return await options(state, _auth)


async def _after_complete(state: State, v: UploadView) -> None:
    if v.state == "complete":
        metrics.TUS_FINISHED.inc()
    if v.state == "complete" and v.metadata.get("kind") == "relaypacs-segment":
        await process_upload(
            v.id,
            sessionmaker=state.sessionmaker,
            uploads=state.tus.store,
            store=state.store,
            max_instance_bytes=state.settings.max_instance_bytes,
        )


@router.post("")
async def create(request: Request, state: State, _auth: Uploader) -> Response:
    """Creation (+ creation-with-upload, defer-length, concatenation); rate limited per caller
    (each device, each person). A person's upload names its study (``Upload-Metadata`` ``study``,
    and ``facility`` when they belong to several), claimed for their facility as at the
    manifest."""
    tus.require_version(request.headers)
    caller = f"{_auth.kind}:{_auth.name}"
    if _auth.kind == "anonymous":  # no agent credential configured: count per address
        caller += ":" + (request.client.host if request.client else "unknown")
    await enforce(state.limiter, upload_create_rule(state.settings), caller)
    req = tus.parse_creation(request.headers, _limits(state))
    if _auth.kind == "user" and "study" not in req.metadata:
        raise ProtocolError(
            "Upload-Metadata study: a person's upload names the study it belongs to"
        )
    if "study" in req.metadata:
        try:
            check_uid(req.metadata["study"], "StudyInstanceUID")
        except DicomValidationError as exc:
            raise ProtocolError(f"Upload-Metadata study: {exc.message}") from exc
        # A device uploads segments of its own facility's studies only, a person those of the
        # facility they send for.
        await claim_upload(state, _auth, req.metadata["study"], req.metadata.get("facility"))
    owner = owner_of(_auth)
    v = await state.tus.create(req, owner)
    metrics.TUS_CREATED.inc()
    location = f"{PREFIX}/{v.id}"
    if req.has_body:
        try:
            v = await _patch_body(request, state, v, owner, offset=0)
        except ProtocolError:
            # Created, but the first bytes did not make it: the client resumes with HEAD.
            return Response(
                status_code=201,
                headers=tus.base_headers({"Location": location, "Upload-Offset": "0"}),
            )
        headers = tus.base_headers(
            {"Upload-Offset": str(v.offset), "Upload-Expires": tus.http_date(v.expires_at)}
        )
        return Response(status_code=201, headers={"Location": location, **headers})
    if v.state == "complete":
        await _after_complete(state, v)
    return Response(status_code=201, headers={"Location": location, **_headers(v)})


@router.head("/{upload_id}")
async def head(upload_id: str, request: Request, state: State, _auth: Uploader) -> Response:
    """Where the upload stands: ``Upload-Offset`` is the truth after any interruption."""
    tus.require_version(request.headers)
    v = await state.tus.get(upload_id, owner_of(_auth))
    return Response(status_code=200, headers=_headers(v))


async def _patch_body(
    request: Request, state: State, current: UploadView, owner: str | None, offset: int | None
) -> UploadView:
    limits = _limits(state)
    req = tus.parse_patch(request.headers, limits, offset=offset)
    length = tus.check_patch(current.tus, req)
    check = tus.BodyCheck(tus.body_room(current.tus, length, limits.max_size), req.checksum)
    chunk, n = await state.tus.stage(request.stream(), check, current.id)
    try:
        v: UploadView = await state.tus.patch(current.id, owner, req, chunk, n)
    finally:
        chunk.unlink(missing_ok=True)
    await _after_complete(state, v)
    return v


@router.patch("/{upload_id}")
async def patch(upload_id: str, request: Request, state: State, _auth: Uploader) -> Response:
    """Append bytes at ``Upload-Offset`` (checksum verified before anything is kept)."""
    tus.require_version(request.headers)
    owner = owner_of(_auth)
    current = await state.tus.get(upload_id, owner)
    v = await _patch_body(request, state, current, owner, offset=None)
    return Response(
        status_code=204,
        headers=tus.base_headers(
            {"Upload-Offset": str(v.offset), "Upload-Expires": tus.http_date(v.expires_at)}
        ),
    )


@router.delete("/{upload_id}")
async def terminate(upload_id: str, request: Request, state: State, _auth: Uploader) -> Response:
    """Termination: the upload and its bytes are removed."""
    tus.require_version(request.headers)
    await state.tus.delete(upload_id, owner_of(_auth))
    return Response(status_code=204, headers=tus.base_headers())
