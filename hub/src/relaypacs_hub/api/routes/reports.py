"""Reports: a radiologist or admin posts one (text, a DICOM SR or Encapsulated PDF, or a plain
PDF); readers get a study's report status and reports; agents follow their facility's feed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
import structlog
from fastapi import (
    APIRouter,
    Depends,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    status,
)
from pydantic import BaseModel, Field, ValidationError

from relaypacs_hub.api.deps import (
    AgentAuth,
    DeviceAuth,
    Policy,
    Principal,
    State,
    StudyReader,
    bearer_matches,
    readable_study,
)
from relaypacs_hub.reports.push import check_endpoint
from relaypacs_hub.reports.service import NewReport, poll_now
from relaypacs_hub.services import reports
from relaypacs_shared.dicom import check_uid
from relaypacs_shared.errors import DicomValidationError
from relaypacs_shared.reports import REPORT_CLASSES, ReportRejected, check_pdf, parse_report
from relaypacs_shared.wire import INT32_MAX

router = APIRouter(tags=["reports"])
log = structlog.get_logger("relaypacs.hub.reports")

REPORTERS = Policy("radiologist, admin", frozenset({"radiologist", "admin"}), admin_token=True)
ReporterAuth = Annotated[Principal, Depends(REPORTERS)]


class ArchiveWebhookPolicy(Policy):
    """An archive's change hook: ``RELAYPACS_HUB_REPORT_WEBHOOK_TOKEN`` (or the admin token)."""

    async def __call__(
        self, state: State, authorization: Annotated[str | None, Header()] = None
    ) -> Principal:
        if bearer_matches(authorization, state.settings.report_webhook_token):
            return Principal("anonymous", "archive-webhook")
        return await super().__call__(state, authorization)


ARCHIVE_WEBHOOK = ArchiveWebhookPolicy("archive webhook", admin_token=True)
ArchiveAuth = Annotated[Principal, Depends(ARCHIVE_WEBHOOK)]

MAX_TEXT = 100_000
FEED_MAX_WAIT = 55.0


class TextReport(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="The report as plain text.")
    status: Literal["preliminary", "final", "amended"] = "final"
    title: str = Field(default="Radiology report", max_length=200)


class ArchiveChange(BaseModel):
    study_instance_uid: str = Field(
        max_length=64, description="The study that got a new object in the archive."
    )
    sop_class_uid: str | None = Field(
        default=None,
        max_length=64,
        description="The new object's SOP Class, when the archive knows it: a class that is "
        "never a report (an image, a dose SR) is acknowledged and not looked at.",
    )


def _problem(code: int, kind: str, detail: str) -> HTTPException:
    return HTTPException(status_code=code, detail={"code": kind, "detail": detail})


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


def _uid(value: str) -> str:
    try:
        return check_uid(value, "StudyInstanceUID")
    except DicomValidationError as exc:
        raise _problem(422, "malformed_uid", exc.message) from exc


async def _read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _problem(413, "too_large", f"a report may be at most {limit} bytes")
    return bytes(body)


@router.post(
    "/api/v1/studies/{study_uid}/reports",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": TextReport.model_json_schema()},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                "application/pdf": {"schema": {"type": "string", "format": "binary"}},
            },
            "required": True,
        }
    },
)
async def post_report(
    study_uid: str,
    request: Request,
    state: State,
    who: ReporterAuth,
    report_status: Annotated[
        Literal["preliminary", "final", "amended"],
        Query(alias="status", description="Status of a posted PDF (JSON and DICOM carry theirs)."),
    ] = "final",
    title: Annotated[str, Query(max_length=200)] = "Radiology report",
) -> dict[str, Any]:
    """Post a report for a study: JSON ``{"text", "status", "title"}``, a DICOM SR or
    Encapsulated PDF (``application/dicom``), or a PDF (``application/pdf``, ``?status=``).
    The study's facility sees it at its agent."""
    study_uid = _uid(study_uid)
    await readable_study(state, who, study_uid)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_body(request, state.settings.report_max_bytes)
    new: NewReport
    source = f"api:{who.name}"
    if content_type in ("application/json", ""):
        try:
            posted = TextReport.model_validate_json(body or b"{}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise _problem(
                422, "invalid_report", f"{where or 'body'}: {first.get('msg', 'invalid')}"
            ) from exc
        new = NewReport(study_uid, source, "text", posted.status, posted.title, posted.text.strip())
    elif content_type == "application/dicom":
        try:
            parsed = await anyio.to_thread.run_sync(parse_report, body)
        except ReportRejected as exc:
            raise _problem(422, "not_a_report", exc.reason) from exc
        if parsed.study_instance_uid != study_uid:
            raise _problem(
                422, "study_mismatch", "the DICOM object belongs to another study than the URL"
            )
        new = NewReport(
            study_uid,
            source,
            parsed.kind,
            parsed.status,
            parsed.title,
            parsed.text,
            content=parsed.content,
            content_type=parsed.content_type,
            sop_instance_uid=parsed.sop_instance_uid,
            predecessors=parsed.predecessors,
        )
    elif content_type == "application/pdf":
        try:
            pdf = check_pdf(body)
        except ReportRejected as exc:
            raise _problem(422, "not_a_report", exc.reason) from exc
        new = NewReport(study_uid, source, "pdf", report_status, title, "", pdf, "application/pdf")
    else:
        raise _problem(
            415,
            "unsupported_media_type",
            "send application/json, application/dicom (SR or Encapsulated PDF) or application/pdf",
        )
    return await reports.post(state, new, who.name, _source(request))


@router.post(
    "/api/v1/reports/archive-changes",
    status_code=status.HTTP_202_ACCEPTED,
    responses={401: {"description": "No or a wrong webhook token."}},
)
async def archive_change(body: ArchiveChange, state: State, who: ArchiveAuth) -> dict[str, bool]:
    """An archive's hook says a study got a new object (a report, perhaps): the hub asks that
    study's archives within a couple of seconds instead of at the next poll. ``watched`` is false
    for a study this hub did not deliver, or for an object that is never a report."""
    uid = _uid(body.study_instance_uid)
    watched = (body.sop_class_uid is None or body.sop_class_uid in REPORT_CLASSES) and (
        await poll_now(state.sessionmaker, uid)
    )
    log.info("archive_change", study_uid=uid, watched=watched)
    return {"watched": watched}


@router.get("/api/v1/studies/{study_uid}/reports")
async def get_reports(
    study_uid: str, request: Request, state: State, who: StudyReader
) -> dict[str, Any]:
    """A study's report status (none, preliminary, final, amended) with its times, and its
    reports, newest first (text included; a PDF through ``/api/v1/reports/{id}/content``)."""
    study_uid = _uid(study_uid)
    await readable_study(state, who, study_uid)
    reader = who.name if who.kind == "user" else None
    return await reports.study_reports(state, study_uid, reader, _source(request))


@router.get("/api/v1/reports/{report_id}/content")
async def get_report_content(
    report_id: Annotated[int, Path(ge=1, le=INT32_MAX)],
    request: Request,
    state: State,
    who: StudyReader,
) -> Response:
    """The PDF of a report (``has_content``)."""
    doc = await reports.document(state, report_id)
    await readable_study(state, who, doc.study_uid)
    await reports.note_document_read(state, doc, who.name, _source(request))
    return Response(
        doc.content,
        media_type=doc.content_type,
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/api/v1/reports/feed")
async def report_feed(
    state: State,
    who: AgentAuth,
    after: Annotated[
        int, Query(ge=0, le=INT32_MAX, description="The cursor: last `seq` already taken.")
    ] = 0,
    wait: Annotated[
        float, Query(ge=0, le=FEED_MAX_WAIT, description="Seconds to wait for an event.")
    ] = 0.0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """The calling agent's facility's report events after ``after`` (long poll: waits up to
    ``wait`` seconds for one). Answers ``cursor`` to send as ``after`` next time."""
    return await reports.feed(state, who.agent_facility, after, wait, limit)


# -- Web Push subscriptions, relayed by the agents --------------------------------------------


class PushKeys(BaseModel):
    p256dh: str = Field(min_length=40, max_length=255, pattern=r"^[A-Za-z0-9_-]+=*$")
    auth: str = Field(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+=*$")


class PushSubscriptionIn(BaseModel):
    endpoint: str = Field(min_length=10, max_length=1024)
    keys: PushKeys
    username: str = Field(min_length=1, max_length=64)


@router.get("/api/v1/push/key")
async def push_key(state: State, who: AgentAuth) -> dict[str, str]:
    """The hub's VAPID public key, for the browser's ``applicationServerKey``."""
    return {"public_key": state.push.public_key}


@router.post("/api/v1/push/subscriptions", status_code=status.HTTP_201_CREATED)
async def push_subscribe(
    body: PushSubscriptionIn, request: Request, state: State, who: DeviceAuth
) -> dict[str, Any]:
    """Keep a browser's push subscription for the device's facility (the agent relays it)."""
    reason = check_endpoint(body.endpoint)
    if reason:
        raise _problem(422, "invalid_endpoint", reason)
    facility = who.agent_facility or ""
    await reports.subscribe(
        state,
        endpoint=body.endpoint,
        p256dh=body.keys.p256dh,
        auth=body.keys.auth,
        facility=facility,
        username=body.username,
        actor=who.name,
        source=_source(request),
    )
    return {"subscribed": True, "facility": facility}


@router.delete("/api/v1/push/subscriptions", status_code=status.HTTP_204_NO_CONTENT)
async def push_unsubscribe(
    state: State, who: DeviceAuth, endpoint: Annotated[str, Query(max_length=1024)]
) -> Response:
    """Forget a subscription of the device's facility."""
    await reports.unsubscribe(state, endpoint, who.agent_facility or "")
    return Response(status_code=204)
