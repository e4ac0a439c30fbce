"""Studies as the agents see them: who may send and read one, the manifest, the commit and where
a study stands."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.audit import audit
from relaypacs_hub.auth import devices
from relaypacs_hub.db.models import (
    ForwardJob,
    Instance,
    InstanceDelivery,
    ManifestEntry,
    Study,
    utcnow,
)
from relaypacs_hub.ingest.commit import StudyIncomplete, commit_study
from relaypacs_hub.ingest.segments import process_pending
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services.errors import Refused, Unknown
from relaypacs_shared.errors import Conflict, Forbidden, Incomplete
from relaypacs_shared.wire import (
    INT64_MAX,
    CommitRequest,
    DestinationStatus,
    ManifestAnswer,
    StudyStatus,
)


def unknown_study() -> Unknown:
    return Unknown("unknown_study", "the hub holds no instance of this study")


async def readable_study(
    sessionmaker: async_sessionmaker[AsyncSession], study_uid: str, allowed: list[str] | None
) -> str | None:
    """The study's facility, when one of ``allowed`` (None: every facility) may read it: its own
    facility, or one an admin accepted it for (a patient transfer)."""
    async with sessionmaker() as session:
        if await session.get(Study, study_uid) is None:
            raise unknown_study()
        facility = await devices.study_facility(session, study_uid)
        readers = await devices.study_facilities(session, study_uid)
    if allowed is not None and not readers & set(allowed):
        raise Forbidden("this study belongs to another facility")
    return facility


async def claim_for_device(
    hub: HubRuntime, facility: str | None, claimant: str, study_uid: str
) -> None:
    """A device may only send studies of its facility (``facility``; None: not a device), and a
    person uploading straight to the hub only those of the facility they send for (``claimant``
    ``user:<name>``): record the facility at the study's first manifest or instance, and refuse
    one that belongs to another facility."""
    if facility is None:
        return
    # Where the study waits meanwhile: the agent's spool, or the person's browser.
    keeper = "the browser" if claimant.startswith("user:") else "the agent"
    try:
        await devices.claim_study(
            hub.sessionmaker,
            study_uid,
            facility,
            claimant,
            hub.settings.study_unclaimed_after_hours,
        )
    except devices.StudyHeld as exc:
        if exc.state == "refused":
            raise Refused(
                "study_refused",
                "an admin of the hub refused this study for your facility"
                + (f": {exc.reason}" if exc.reason else "")
                + f". It is kept at {keeper}; ask the hub's admin if this is a mistake",
            ) from exc
        raise Refused(
            "study_held",
            "this study is already at the hub for another facility (a patient transfer, or two "
            "studies sharing one UID): it is held until an admin of the hub accepts it for your "
            f"facility. Nothing is lost: {keeper} keeps it and sends it once accepted",
        ) from exc
    except devices.FacilityMismatch as exc:
        raise Forbidden("this study belongs to another facility") from exc


# -- manifest ----------------------------------------------------------------------------------


class ManifestInstance(BaseModel):
    sop_instance_uid: str
    series_instance_uid: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=INT64_MAX)


async def answer_manifest(
    hub: HubRuntime, study_uid: str, instances: list[ManifestInstance]
) -> ManifestAnswer:
    """Record the manifest and answer which instances must still be sent; 409 ``conflict`` for
    instances the hub holds with other bytes."""
    await process_pending(
        study_uid,
        sessionmaker=hub.sessionmaker,
        uploads=hub.tus.store,
        store=hub.store,
        max_instance_bytes=hub.settings.max_instance_bytes,
    )
    wanted = {i.sop_instance_uid: i for i in instances}
    # The same manifest may arrive twice at once (an agent on a lossy link sends it again on a
    # second connection when the first is slow): the copy that loses the insert race reads the
    # rows the other wrote and answers alike.
    for attempt in range(2):
        try:
            held = await _record_manifest(hub.sessionmaker, study_uid, wanted)
            break
        except IntegrityError:
            if attempt:
                raise
    conflicts = [s for s, sha in held.items() if wanted[s].sha256 != sha]
    if conflicts:
        raise Conflict(f"{len(conflicts)} instance(s) are held with other bytes", conflicts)
    missing = [s for s in wanted if s not in held]
    return ManifestAnswer(
        study_instance_uid=study_uid,
        declared=len(wanted),
        held=len(wanted) - len(missing),
        missing=missing,
        missing_bytes=sum(wanted[s].size for s in missing),
    )


async def _record_manifest(
    sessionmaker: async_sessionmaker[AsyncSession],
    study_uid: str,
    wanted: dict[str, ManifestInstance],
) -> dict[str, str]:
    """Record the declared instances; the SHA-256 of those the hub already holds."""
    async with sessionmaker() as session, session.begin():
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


# -- commit and status -------------------------------------------------------------------------


async def commit(
    hub: HubRuntime,
    study_uid: str,
    body: CommitRequest,
    *,
    facility: str | None,
    actor: str,
    source: str | None,
    via: str | None = None,
) -> StudyStatus:
    """Commit a study once every instance of the manifest is held (409 ``incomplete`` naming the
    missing ones); routing and forwarding start then. ``via``: ``direct`` for a person uploading
    straight to the hub (recorded in the audit record)."""
    try:
        await commit_study(
            hub.sessionmaker,
            study_uid,
            body,
            hub.delivery.router,
            facility=facility,
            agent_received_at=body.received_at,
        )
    except StudyIncomplete as exc:
        raise Incomplete(str(exc), exc.missing) from exc
    # A person's upload straight to the hub says so, and for which facility.
    direct: dict[str, Any] = {"facility": facility, "via": via} if via else {}
    await audit(
        hub.sessionmaker,
        actor,
        "study.committed",
        study_uid,
        source=source,
        instances=len(body.instances),
        **direct,
    )
    hub.delivery.wake()
    return await study_status(hub.sessionmaker, study_uid)


async def study_status(
    sessionmaker: async_sessionmaker[AsyncSession], study_uid: str
) -> StudyStatus:
    """Where a study stands: committed or not, and per destination delivered and confirmed."""
    async with sessionmaker() as session:
        study = await session.get(Study, study_uid)
        if study is None:
            raise unknown_study()
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
