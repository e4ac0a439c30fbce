"""Manifest first: the agent (or a person uploading straight to the hub) declares a study's
instances, the hub answers which it lacks.

Instances the hub already holds (same SOP Instance UID, same SHA-256) never cross the WAN again,
whichever agent or study brought them before.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from relaypacs_hub.api.deps import State, Uploader, claim_upload
from relaypacs_hub.services import studies
from relaypacs_hub.services.studies import ManifestInstance
from relaypacs_shared.dicom import check_uid
from relaypacs_shared.errors import DicomValidationError
from relaypacs_shared.wire import ManifestAnswer

router = APIRouter(prefix="/api/v1/studies", tags=["manifests"])


class ManifestRequest(BaseModel):
    service_level: str = "routine"
    instances: list[ManifestInstance] = Field(min_length=1)
    facility: str | None = Field(
        default=None,
        max_length=128,
        description="The facility the study is sent for. A person uploading straight to the hub "
        "names one of theirs (needed when they belong to several); an enrolled device's "
        "facility comes from its credential.",
    )


@router.post("/{study_uid}/manifest", response_model=ManifestAnswer)
async def post_manifest(
    study_uid: str, body: ManifestRequest, state: State, who: Uploader
) -> ManifestAnswer:
    """Record the manifest and answer which instances must still be sent (the study is claimed
    for the sender's facility first: a device's, or the one a person sends for)."""
    try:
        study_uid = check_uid(study_uid, "StudyInstanceUID")
        for inst in body.instances:
            check_uid(inst.sop_instance_uid, "SOPInstanceUID")
            check_uid(inst.series_instance_uid, "SeriesInstanceUID")
    except DicomValidationError as exc:
        raise HTTPException(422, {"code": exc.reason, "detail": exc.message}) from exc
    await claim_upload(state, who, study_uid, body.facility)
    return await studies.answer_manifest(state, study_uid, body.instances)
