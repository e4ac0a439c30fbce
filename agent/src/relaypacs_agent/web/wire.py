"""The agent's LAN API contract: every JSON body the LAN app answers the upload app (the PWA)
with, and every body the app posts, as pydantic models.

The handlers build their answers through these models (:func:`answer`), so the JSON cannot drift
from what is declared here; ``scripts/gendocs.py`` renders :func:`openapi` into the upload app's
TypeScript (``pwa/src/upload/agent-api.ts``), so the app's types cannot drift from it either.
Errors are ``{"code", "detail"}`` (:class:`Problem`); tus answers are headers (docs/tus.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from pydantic.json_schema import models_json_schema
from starlette.responses import JSONResponse

from relaypacs_shared.reports import ReportKind, ReportStatus

ServiceLevel = Literal["stat", "routine"]
# Where a study stands, as the upload app names it (least advanced first).
Stage = Literal["agent", "sending", "hub", "pacs"]


def _absent_not_null(schema: dict[str, Any]) -> None:
    """An optional field that is left out of the JSON, never sent as null: its schema is its
    type's alone (TypeScript ``name?: T``, not ``name?: T | null``)."""
    schema.update(next(s for s in schema.pop("anyOf") if s.get("type") != "null"))
    schema.pop("default", None)


def omittable() -> Any:
    """A field the JSON leaves out when it has no value (``None`` here)."""
    return Field(default=None, json_schema_extra=_absent_not_null)


class Answer(BaseModel):
    """An answer the agent sends: exactly the declared fields, an :func:`omittable` one left
    out when it is None (by hand: ``Field(exclude_if=...)`` needs pydantic 2.12)."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for name, field in type(self).model_fields.items():
            if field.json_schema_extra is _absent_not_null and data.get(name, 0) is None:
                del data[name]
        return data


class Problem(Answer):
    """Every error of the LAN API (but tus's, which carry their own headers)."""

    code: str
    detail: str


# -- info and sessions -------------------------------------------------------------------------


class HubContact(Answer):
    """The hub as the agent sees it."""

    reachable: bool
    last_contact_at: float | None  # unix s


class AgentInfo(Answer):
    """``GET /api/v1/info`` (no sign-in): what the app shows before anyone signs in."""

    product: str
    version: str
    facility: str | None
    hub: HubContact
    max_upload_bytes: int


class Me(Answer):
    """``GET /api/v1/auth/me``: the signed-in LAN session."""

    username: str
    role: str
    facilities: list[str]
    expires_at: float  # unix s
    offline: bool  # signed in against the agent's cached verifiers while the hub was away


class Session(Answer):
    """``POST /api/v1/auth/login``: the bearer token and its session."""

    token: str
    username: str
    role: str
    facilities: list[str]
    expires_at: float  # unix s
    offline: bool


class LoginRequest(BaseModel):
    """The body of ``POST /api/v1/auth/login``."""

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    totp_code: str | None = None


# -- the Agent page (admins) -------------------------------------------------------------------


class ReasonWords(Answer):
    """A refusal reason in plain words (one table with the agent's CLI)."""

    label: str
    explanation: str
    what_to_do: str


class AgentTotals(Answer):
    instances: int
    instances_by_state: dict[str, int]  # spooled | uploaded | refused
    duplicates: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    studies: int
    studies_by_state: dict[str, int]  # receiving | committed | delivered
    conformance_findings: int | None = omittable()  # not before the catalogue exists


class Disk(Answer):
    """The agent's free space against its reserve; empty when it keeps no reserve."""

    free_bytes: int | None = omittable()
    reserve_bytes: int | None = omittable()
    refusing: bool | None = omittable()


class LanUploads(Answer):
    open_uploads: int
    bytes_expected: int


class AgentReport(Answer):
    """``GET /api/v1/status`` (admin): the catalogue's totals, disk and hub contact."""

    exists: bool
    totals: AgentTotals
    disk: Disk | None  # null before the catalogue exists
    hub: HubContact
    lan: LanUploads
    reasons: dict[str, ReasonWords]  # words for each quarantine reason in the totals


class QuarantineEntry(Answer):
    id: int
    original_name: str
    source: str
    reason: str
    message: str
    label: str
    explanation: str
    what_to_do: str
    size: int
    quarantined_at: float  # unix s


class QuarantineList(Answer):
    """``GET /api/v1/quarantine`` (admin): open entries, newest first (at most 500)."""

    total: int
    entries: list[QuarantineEntry]


# -- batches -----------------------------------------------------------------------------------


class NewBatch(BaseModel):
    """The body of ``POST /api/v1/batches``: one study picked on a phone."""

    service_level: ServiceLevel = "routine"
    clinical_history: str = Field(default="", max_length=4000)
    referring_clinician: str = Field(default="", max_length=200)
    label: str = Field(default="", max_length=200)
    expected_files: int = Field(default=0, ge=0, le=100_000)


class FileCounts(Answer):
    received: int
    accepted: int
    duplicate: int
    quarantined: int


class RefusedFile(Answer):
    """A file of the batch the agent quarantined: its technical message, and the reason in
    words with what to do."""

    filename: str
    reason: str
    message: str
    label: str
    explanation: str
    what_to_do: str


class BatchStudy(Answer):
    study_instance_uid: str
    stage: Stage
    instances: int
    files_from_this_batch: int
    bytes_total: int
    bytes_sent: int
    percent: float
    last_error: str | None


class ServerBatch(Answer):
    """A batch as the agent holds it (``GET``/``POST /api/v1/batches…``)."""

    id: str
    service_level: ServiceLevel
    clinical_history: str
    referring_clinician: str
    label: str
    created_by: str
    created_at: float  # unix s
    sent_at: float | None
    expected_files: int
    files: FileCounts
    refused: list[RefusedFile]
    studies: list[BatchStudy]


class BatchList(Answer):
    """``GET /api/v1/batches``: the caller's recent batches (an admin's all with ``?all=1``)."""

    batches: list[ServerBatch]


# -- reports -----------------------------------------------------------------------------------


class ReportEntry(Answer):
    """One report the agent holds for a study."""

    id: int
    study_instance_uid: str
    status: ReportStatus
    kind: ReportKind
    title: str
    text: str
    document: str | None  # the PDF's path in this API
    hub_received_at: str
    received_at: float  # unix s


class ReportSummary(Answer):
    """A study's latest report in the list (without its text), with the study's status."""

    id: int
    study_instance_uid: str
    status: ReportStatus
    kind: ReportKind
    title: str
    document: str | None
    hub_received_at: str
    received_at: float
    study_status: ReportStatus


class ReportList(Answer):
    """``GET /api/v1/reports``: each study's latest report, newest first."""

    reports: list[ReportSummary]


class StudyReport(Answer):
    """``GET /api/v1/studies/{uid}/report``: the newest report with text and the newest with a
    PDF, and every report of the study."""

    study_instance_uid: str
    status: ReportStatus
    title: str
    kind: ReportKind
    text: str
    report_id: int
    document: str | None
    document_report_id: int | None
    received_at: float
    reports: list[ReportEntry]


class ReportEvent(Answer):
    """The data of a ``report`` event on ``GET /api/v1/events`` (server-sent events)."""

    study_instance_uid: str
    status: ReportStatus
    report_id: int


class PushKey(Answer):
    """``GET /api/v1/push/key``: the hub's VAPID public key (base64url)."""

    public_key: str


class PushKeys(BaseModel):
    p256dh: str
    auth: str


class PushSubscription(BaseModel):
    """The body of ``POST /api/v1/push/subscriptions``: the browser's PushSubscription."""

    endpoint: str
    keys: PushKeys


class PushSubscribed(Answer):
    subscribed: bool


def answer(
    body: Answer, status_code: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON response of a declared answer."""
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


ANSWERS: tuple[type[Answer], ...] = (
    Problem,
    AgentInfo,
    Session,
    Me,
    AgentReport,
    QuarantineList,
    ServerBatch,
    BatchList,
    ReportList,
    StudyReport,
    ReportEvent,
    PushKey,
    PushSubscribed,
)
REQUESTS: tuple[type[BaseModel], ...] = (LoginRequest, NewBatch, PushSubscription)


def openapi() -> dict[str, Any]:
    """The LAN API's models as an OpenAPI document (its ``components``; the routes are in
    ``relaypacs_agent.web.app.ROUTES``)."""
    # Validation schemas: an answer's are its fields (the serializer above only leaves out the
    # omittable ones, whose schema says they are optional), a request's what the agent accepts.
    _, schema = models_json_schema(
        [(m, "validation") for m in (*ANSWERS, *REQUESTS)],
        ref_template="#/components/schemas/{model}",
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "RelayPACS agent LAN API",
            "version": "1",
            "description": "What the agent's LAN app answers the upload app with, and what the "
            "app posts (relaypacs_agent.web.wire).",
        },
        "paths": {},
        "components": {"schemas": schema["$defs"]},
    }
