"""Manifest first: the agent declares a study's instances, the hub answers which it lacks.

Instances the hub already holds (same SOP Instance UID, same SHA-256) never cross the WAN again,
whichever agent or study brought them before.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from relaypacs_hub.api.deps import AgentAuth, State
from relaypacs_hub.api.routes.studies import claim_for_device
from relaypacs_hub.db.models import Instance, ManifestEntry, utcnow
from relaypacs_hub.ingest.segments import process_pending
from relaypacs_shared.dicom import check_uid
from relaypacs_shared.errors import DicomValidationError
from relaypacs_shared.wire import INT64_MAX, ManifestAnswer

router = APIRouter(prefix="/api/v1/studies", tags=["manifests"])


class ManifestInstance(BaseModel):
    sop_instance_uid: str
    series_instance_uid: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=INT64_MAX)


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
    await claim_for_device(state, who, study_uid)
    if state.tus is not None:
        await process_pending(
            study_uid,
            sessionmaker=state.sessionmaker,
            uploads=state.tus.store,
            store=state.store,
            max_instance_bytes=state.settings.max_instance_bytes,
        )
    wanted = {i.sop_instance_uid: i for i in body.instances}
    # The same manifest may arrive twice at once (an agent on a lossy link sends it again on a
    # second connection when the first is slow): the copy that loses the insert race reads the
    # rows the other wrote and answers alike.
    for attempt in range(2):
        try:
            held = await _record_manifest(state, study_uid, wanted)
            break
        except IntegrityError:
            if attempt:
                raise
    conflicts = [s for s, sha in held.items() if wanted[s].sha256 != sha]
    if conflicts:
        raise HTTPException(
            409,
            {
                "code": "conflict",
                "detail": f"{len(conflicts)} instance(s) are held with other bytes",
                "missing": conflicts[:1000],
            },
        )
    missing = [s for s in wanted if s not in held]
    return ManifestAnswer(
        study_instance_uid=study_uid,
        declared=len(wanted),
        held=len(wanted) - len(missing),
        missing=missing,
        missing_bytes=sum(wanted[s].size for s in missing),
    )


async def _record_manifest(
    state: State, study_uid: str, wanted: dict[str, ManifestInstance]
) -> dict[str, str]:
    """Record the declared instances; the SHA-256 of those the hub already holds."""
    async with state.sessionmaker() as session, session.begin():
        existing = {
            m.sop_instance_uid: m
            for m in await session.scalars(
                select(ManifestEntry).where(ManifestEntry.study_instance_uid == study_uid)
            )
        }
        now = utcnow()
        for sop, inst in wanted.items():
            m = existing.get(sop)
            if m is None:
                session.add(
                    ManifestEntry(
                        study_instance_uid=study_uid,
                        sop_instance_uid=sop,
                        series_instance_uid=inst.series_instance_uid,
                        sha256=inst.sha256,
                        size=inst.size,
                        declared_at=now,
                    )
                )
            elif m.sha256 != inst.sha256:
                m.sha256, m.size, m.declared_at = inst.sha256, inst.size, now
        held = {
            i.sop_instance_uid: i.sha256
            for i in await session.scalars(
                select(Instance).where(Instance.sop_instance_uid.in_(list(wanted)))
            )
        }
    return held
