"""The LAN app's report routes: a study's report, the list of recent reports (the PWA's
notification list), a report's PDF, and a live stream (server-sent events) that tells the PWA a
report arrived. Every read of a report is audited."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from relaypacs_agent.store import audit
from relaypacs_agent.uplink.client import HubRefused, HubUnavailable
from relaypacs_agent.web import wire
from relaypacs_agent.web.auth import LanSession

if TYPE_CHECKING:
    from relaypacs_agent.web.app import WebContext

_UID = re.compile(r"^[0-9.]{1,64}$")
STREAM_SECONDS = 300.0  # a stream ends after this; the app reconnects (proxies dislike endless)
KEEPALIVE_SECONDS = 15.0


def _problem(status: int, code: str, detail: str) -> Response:
    return wire.answer(wire.Problem(code=code, detail=detail), status)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def study_report(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    study_uid = request.path_params["study_uid"]
    if not _UID.match(study_uid):
        return _problem(422, "malformed_uid", "a Study Instance UID is digits and dots")
    inbox = ctx.reports
    reports = await anyio.to_thread.run_sync(inbox.for_study, study_uid) if inbox else []
    if not reports:
        return _problem(404, "no_report", "there is no report for this study yet")
    assert inbox is not None
    await anyio.to_thread.run_sync(
        lambda: audit.audit(
            inbox.store, s.username, "report.read", study_uid, source=_client(request)
        )
    )
    # The newest report with text and the newest with a PDF (a reporting system often stores
    # the same report both as an SR and as a PDF).
    latest = reports[0]
    with_text = next((r for r in reports if r["text"]), None)
    with_document = next((r for r in reports if r["document"]), None)
    status = await anyio.to_thread.run_sync(inbox.study_status, study_uid)
    return wire.answer(
        wire.StudyReport(
            study_instance_uid=study_uid,
            status=status,  # type: ignore[arg-type]  # the study has a report: not "none"
            title=(with_text or latest)["title"],
            kind=(with_text or latest)["kind"],
            text=with_text["text"] if with_text else "",
            report_id=(with_text or latest)["id"],
            document=with_document["document"] if with_document else None,
            document_report_id=with_document["id"] if with_document else None,
            received_at=latest["received_at"],
            reports=[wire.ReportEntry.model_validate(r) for r in reports],
        ),
        headers={"Cache-Control": "no-store"},
    )


async def list_reports(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    inbox = ctx.reports
    items = await anyio.to_thread.run_sync(inbox.recent) if inbox else []
    for item in items:
        item.pop("text", None)  # the list says which studies have reports; reading is per study
    return wire.answer(
        wire.ReportList(reports=[wire.ReportSummary.model_validate(i) for i in items]),
        headers={"Cache-Control": "no-store"},
    )


async def report_document(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    inbox = ctx.reports
    report = (
        await anyio.to_thread.run_sync(inbox.get, int(request.path_params["report_id"]))
        if inbox
        else None
    )
    if inbox is None or report is None or report["document"] is None:
        return _problem(404, "not_found", "no such report document")
    path = inbox.document_path(f"{report['id']}.pdf")
    if not path.is_file():
        return _problem(404, "not_found", "the report document is missing at the agent")
    await anyio.to_thread.run_sync(
        lambda: audit.audit(
            inbox.store,
            s.username,
            "report.read",
            report["study_instance_uid"],
            source=_client(request),
            report_id=report["id"],
        )
    )
    return FileResponse(
        path,
        media_type="application/pdf",
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": "inline",
        },
    )


async def events(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    """Server-sent events: ``report`` with the study's uid and status when a report arrives."""
    inbox = ctx.reports
    try:
        lifetime = min(float(request.query_params.get("max_seconds", STREAM_SECONDS)), 3600.0)
    except ValueError:
        return _problem(422, "invalid", "max_seconds must be a number")

    async def stream() -> AsyncIterator[bytes]:
        seen = inbox.version if inbox else 0
        latest = await anyio.to_thread.run_sync(inbox.recent, 1) if inbox else []
        last_id = latest[0]["id"] if latest else 0
        yield b"retry: 3000\n: connected\n\n"
        end = time.monotonic() + lifetime
        last_beat = time.monotonic()
        while time.monotonic() < end:
            if inbox is not None and inbox.version != seen:
                seen = inbox.version
                fresh = await anyio.to_thread.run_sync(inbox.recent, 20)
                for item in reversed([r for r in fresh if r["id"] > last_id]):
                    data = wire.ReportEvent(
                        study_instance_uid=item["study_instance_uid"],
                        status=item["study_status"],
                        report_id=item["id"],
                    )
                    yield f"event: report\ndata: {json.dumps(data.model_dump())}\n\n".encode()
                    last_id = max(last_id, item["id"])
            if time.monotonic() - last_beat > KEEPALIVE_SECONDS:
                last_beat = time.monotonic()
                yield b": keepalive\n\n"
            if await request.is_disconnected():
                return
            await anyio.sleep(0.25)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# -- Web Push: the browser subscribes here, the agent relays to the hub ------------------------


async def push_key(request: Request, ctx: WebContext, _s: LanSession | None) -> Response:
    if ctx.hub is None:
        return _problem(503, "no_hub", "this agent has no hub to relay notifications")
    try:
        key = await anyio.to_thread.run_sync(ctx.hub.push_key)
    except HubUnavailable:
        return _problem(503, "hub_unreachable", "the hub is unreachable; try again later")
    except HubRefused as exc:
        return _problem(409, "push_unavailable", f"the hub refused: {exc.detail}")
    return wire.answer(wire.PushKey(public_key=key), headers={"Cache-Control": "no-store"})


async def push_subscribe(request: Request, ctx: WebContext, s: LanSession | None) -> Response:
    assert s is not None
    try:
        body = await request.json()
        sub = wire.PushSubscription(
            endpoint=str(body["endpoint"]),
            keys=wire.PushKeys(p256dh=str(body["keys"]["p256dh"]), auth=str(body["keys"]["auth"])),
        )
    except (ValueError, KeyError, TypeError):
        return _problem(422, "invalid_subscription", "send the browser's PushSubscription")
    if ctx.hub is None:
        return _problem(503, "no_hub", "this agent has no hub to relay notifications")
    try:
        await anyio.to_thread.run_sync(lambda: ctx.hub.push_subscribe(sub.model_dump(), s.username))
    except HubUnavailable:
        return _problem(503, "hub_unreachable", "the hub is unreachable; try again later")
    except HubRefused as exc:
        return _problem(409, "push_refused", f"the hub refused: {exc.detail}")
    return wire.answer(wire.PushSubscribed(subscribed=True), 201)
