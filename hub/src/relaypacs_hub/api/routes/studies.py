"""Agent-facing study API: upload instances, commit studies, read their delivery status. A person
uploading straight to the hub commits and reads the status of their facilities' studies too."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response, status

from relaypacs_hub.api.deps import (
    AgentAuth,
    State,
    StudyStatusReader,
    Uploader,
    claim_upload,
    readable_study,
)
from relaypacs_hub.ingest.receive import BodyTooLarge, InstanceConflict, receive_instance
from relaypacs_hub.services import studies
from relaypacs_shared.dicom import check_uid
from relaypacs_shared.errors import ChecksumMismatch, DicomValidationError, ProtocolError
from relaypacs_shared.wire import (
    CommitRequest,
    InstanceReceipt,
    StudyStatus,
    parse_content_digest,
)

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])


def _problem(code: int, kind: str, detail: str) -> HTTPException:
    return HTTPException(status_code=code, detail={"code": kind, "detail": detail})


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
    await studies.claim_for_device(state, who.agent_facility, who.name, study_uid)
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
    who: Uploader,
    request: Request,
) -> StudyStatus:
    """Commit a study once every instance of the manifest is held; forwarding starts then."""
    study_uid = _uid(study_uid, "StudyInstanceUID")
    # An enrolled device commits for its own facility only, a person for one of theirs (the
    # study claimed for it); the legacy agent token declares the facility in the body.
    facility = await claim_upload(state, who, study_uid, body.facility)
    direct = who.kind == "user"
    return await studies.commit(
        state,
        study_uid,
        body,
        facility=facility,
        actor=who.name if who.device_id or direct else f"agent:{facility or '-'}",
        source=request.client.host if request.client else None,
        via="direct" if direct else None,
    )


@router.get("/{study_uid}", response_model=StudyStatus)
async def get_study(study_uid: str, state: State, who: StudyStatusReader) -> StudyStatus:
    """Where a study stands: committed or not, and per destination delivered and confirmed."""
    study_uid = _uid(study_uid, "StudyInstanceUID")
    await readable_study(state, who, study_uid)
    return await studies.study_status(state.sessionmaker, study_uid)
