"""Manifest first: the agent declares a study's instances, the hub answers which it lacks.

Instances the hub already holds (same SOP Instance UID, same SHA-256) never cross the WAN again,
whichever agent or study brought them before.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from relaypacs_hub.api.deps import AgentAuth, State
from relaypacs_hub.services import studies
from relaypacs_hub.services.studies import ManifestInstance
from relaypacs_shared.dicom import check_uid
from relaypacs_shared.errors import DicomValidationError
from relaypacs_shared.wire import ManifestAnswer

router = APIRouter(prefix="/api/v1/studies", tags=["manifests"])


class ManifestRequest(BaseModel):
    service_level: str = "routine"
    instances: list[ManifestInstance] = Field(min_length=1)


@router.post("/{study_uid}/manifest", response_model=ManifestAnswer)
async def post_manifest(
    study_uid: str, body: ManifestRequest, state: State, who: AgentAuth
) -> ManifestAnswer:
    """Record the manifest and answer which instances must still be sent."""
    try:
        study_uid = check_uid(study_uid, "StudyInstanceUID")
        for inst in body.instances:
            check_uid(inst.sop_instance_uid, "SOPInstanceUID")
            check_uid(inst.series_instance_uid, "SeriesInstanceUID")
    except DicomValidationError as exc:
        raise HTTPException(422, {"code": exc.reason, "detail": exc.message}) from exc
    await studies.claim_for_device(state, who.agent_facility, who.name, study_uid)
    return await studies.answer_manifest(state, study_uid, body.instances)
