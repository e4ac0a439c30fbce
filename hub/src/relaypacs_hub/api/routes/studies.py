"""Agent-facing study API: upload instances, commit studies, read their delivery status."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response, status
from sqlalchemy import func, select

from relaypacs_hub.api.deps import (
    AgentAuth,
    DeliveryDep,
    Principal,
    State,
    StudyReader,
    readable_study,
)
from relaypacs_hub.audit import audit
from relaypacs_hub.auth import devices
from relaypacs_hub.db.models import ForwardJob, Instance, InstanceDelivery, Study
from relaypacs_hub.ingest.commit import StudyIncomplete, commit_study
from relaypacs_hub.ingest.receive import BodyTooLarge, InstanceConflict, receive_instance
from relaypacs_shared.dicom import check_uid
from relaypacs_shared.errors import ChecksumMismatch, DicomValidationError, ProtocolError
from relaypacs_shared.wire import (
    CommitRequest,
    DestinationStatus,
    InstanceReceipt,
    StudyStatus,
    parse_content_digest,
)

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])


def _problem(code: int, kind: str, detail: str, missing: list[str] | None = None) -> HTTPException:
    body: dict[str, object] = {"code": kind, "detail": detail}
    if missing is not None:
        body["missing"] = missing
    return HTTPException(status_code=code, detail=body)


async def claim_for_device(state: State, who: Principal, study_uid: str) -> None:
    """A device may only send studies of its facility: record the facility at the study's first
    manifest or instance, and refuse one that belongs to another facility."""
    facility = who.agent_facility
    if facility is None:
        return
    try:
        await devices.claim_study(
            state.sessionmaker,
            study_uid,
            facility,
            who.name,
            state.settings.study_unclaimed_after_hours,
        )
    except devices.StudyHeld as exc:
        if exc.state == "refused":
            raise _problem(
                409, "study_refused",
                "an admin of the hub refused this study for your facility"
                + (f": {exc.reason}" if exc.reason else "")
                + ". It is kept at the agent; ask the hub's admin if this is a mistake",
            ) from exc  # fmt: skip
        raise _problem(
            409, "study_held",
            "this study is already at the hub for another facility (a patient transfer, or two "
            "studies sharing one UID): it is held until an admin of the hub accepts it for your "
            "facility. Nothing is lost: the agent keeps it and sends it once accepted",
        ) from exc  # fmt: skip
    except devices.FacilityMismatch as exc:
        raise _problem(403, "forbidden", "this study belongs to another facility") from exc


def _uid(value: str, name: str) -> str:
    try:
        return check_uid(value, name)
    except DicomValidationError as exc:
        raise _problem(422, "malformed_uid", exc.message) from exc


@router.put(
    "/{study_uid}/instances/{sop_uid}",
    response_model=InstanceReceipt,
    status_code=status.HTTP_201_CREATED,
)
async def put_instance(
    study_uid: str,
    sop_uid: str,
    request: Request,
    response: Response,
    state: State,
    who: AgentAuth,
    content_digest: Annotated[str | None, Header()] = None,
) -> InstanceReceipt:
    """Store one instance. Idempotent: the same bytes again answer 200 ``duplicate``."""
    study_uid = _uid(study_uid, "StudyInstanceUID")
    sop_uid = _uid(sop_uid, "SOPInstanceUID")
    await claim_for_device(state, who, study_uid)
    try:
        declared = parse_content_digest(content_digest or "")
    except ProtocolError as exc:
        raise _problem(400, "bad_digest", str(exc)) from exc
    try:
        receipt = await receive_instance(
            sessionmaker=state.sessionmaker,
            store=state.store,
            study_uid=study_uid,
            sop_uid=sop_uid,
            declared_sha256=declared,
            body=request.stream(),
            max_bytes=state.settings.max_instance_bytes,
        )
    except ChecksumMismatch as exc:
        raise _problem(400, "checksum_mismatch", str(exc)) from exc
    except BodyTooLarge as exc:
        raise _problem(413, "too_large", str(exc)) from exc
    except InstanceConflict as exc:
        raise _problem(409, "conflict", str(exc)) from exc
    except DicomValidationError as exc:
        raise _problem(422, exc.reason, exc.message) from exc
    if receipt.status == "duplicate":
        response.status_code = status.HTTP_200_OK
    return receipt


@router.post("/{study_uid}/commit", response_model=StudyStatus)
async def post_commit(
    study_uid: str,
    body: CommitRequest,
    state: State,
    delivery: DeliveryDep,
    who: AgentAuth,
    request: Request,
) -> StudyStatus:
    """Commit a study once every instance of the manifest is held; forwarding starts then."""
    study_uid = _uid(study_uid, "StudyInstanceUID")
    facility = body.facility
    if who.agent_facility is not None:  # an enrolled device commits for its own facility only
        if body.facility is not None and body.facility != who.agent_facility:
            raise _problem(403, "forbidden", "a device may only commit for its own facility")
        facility = who.agent_facility
        await claim_for_device(state, who, study_uid)
    try:
        await commit_study(
            state.sessionmaker,
            study_uid,
            body,
            delivery.router,
            # An enrolled device's credential vouches for its facility; the legacy agent token
            # declares it in the body.
            facility=facility,
            agent_received_at=body.received_at,
        )
    except StudyIncomplete as exc:
        raise _problem(409, "incomplete", str(exc), missing=exc.missing[:1000]) from exc
    await audit(
        state.sessionmaker,
        who.name if who.device_id else f"agent:{facility or '-'}",
        "study.committed",
        study_uid,
        source=request.client.host if request.client else None,
        instances=len(body.instances),
    )
    delivery.wake()
    return await _status(state, study_uid)


@router.get("/{study_uid}", response_model=StudyStatus)
async def get_study(study_uid: str, state: State, who: StudyReader) -> StudyStatus:
    """Where a study stands: committed or not, and per destination delivered and confirmed."""
    study_uid = _uid(study_uid, "StudyInstanceUID")
    await readable_study(state, who, study_uid)
    return await _status(state, study_uid)


async def _status(state: State, study_uid: str) -> StudyStatus:
    async with state.sessionmaker() as session:
        study = await session.get(Study, study_uid)
        if study is None:
            raise _problem(404, "unknown_study", "the hub holds no instance of this study")
        jobs = list(
            await session.scalars(
                select(ForwardJob)
                .where(ForwardJob.study_instance_uid == study_uid)
                .order_by(ForwardJob.destination)
            )
        )
        counts = {
            row[0]: (row[1], row[2])
            for row in await session.execute(
                select(
                    InstanceDelivery.destination,
                    func.count(),
                    func.count(InstanceDelivery.confirmed_at),
                )
                .join(Instance, Instance.sop_instance_uid == InstanceDelivery.sop_instance_uid)
                .where(Instance.study_instance_uid == study_uid)
                .group_by(InstanceDelivery.destination)
            )
        }
        return StudyStatus(
            study_instance_uid=study.study_instance_uid,
            state=study.state,
            service_level=study.service_level,
            instance_count=study.instance_count,
            committed_at=study.committed_at,
            destinations=[
                DestinationStatus(
                    destination=j.destination,
                    state=j.state,
                    attempts=j.attempts,
                    delivered_instances=counts.get(j.destination, (0, 0))[0],
                    confirmed_instances=counts.get(j.destination, (0, 0))[1],
                    last_error=j.last_error,
                    completed_at=j.completed_at,
                )
                for j in jobs
            ],
        )
