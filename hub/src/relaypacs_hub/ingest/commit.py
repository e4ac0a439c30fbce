"""Commit a study: every instance of the agent's manifest is held with the manifest's hash.

A partial study is never forwarded. A later commit with more instances (a late series) re-opens
each destination's job; only what a destination does not hold yet is sent again.
"""

from __future__ import annotations

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.db.models import ForwardJob, Instance, Study, utcnow
from relaypacs_hub.ingest.receive import held_instances
from relaypacs_shared.errors import ProtocolError
from relaypacs_shared.wire import CommitRequest

log = structlog.get_logger("relaypacs.hub.commit")

PRIORITY = {"stat": 100, "routine": 0}


class StudyIncomplete(ProtocolError):
    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"{len(missing)} instance(s) of the manifest are not held by the hub")
        self.missing = missing


async def commit_study(
    sessionmaker: async_sessionmaker[AsyncSession],
    study_uid: str,
    request: CommitRequest,
    destinations: list[str],
) -> None:
    async with sessionmaker() as session, session.begin():
        held = await held_instances(session, study_uid)
        missing = [
            e.sop_instance_uid
            for e in request.instances
            if held.get(e.sop_instance_uid) != e.sha256
        ]
        if missing:
            raise StudyIncomplete(missing)
        now = utcnow()
        manifest = {e.sop_instance_uid for e in request.instances}
        await session.execute(
            update(Instance)
            .where(Instance.study_instance_uid == study_uid)
            .where(Instance.sop_instance_uid.in_(manifest))
            .where(Instance.committed_at.is_(None))
            .values(committed_at=now)
        )
        study = await session.get(Study, study_uid, with_for_update=True)
        if study is None:  # pragma: no cover - held instances imply the study row
            raise StudyIncomplete([e.sop_instance_uid for e in request.instances])
        study.state = "committed"
        study.commits += 1
        study.instance_count = (
            await session.scalar(
                select(func.count())
                .select_from(Instance)
                .where(Instance.study_instance_uid == study_uid)
                .where(Instance.committed_at.is_not(None))
            )
            or 0
        )
        study.committed_at = now
        if request.service_level == "stat":
            study.service_level = "stat"
        priority = PRIORITY[study.service_level]
        jobs = {
            j.destination: j
            for j in (
                await session.scalars(
                    select(ForwardJob).where(ForwardJob.study_instance_uid == study_uid)
                )
            )
        }
        for dest in destinations:
            job = jobs.get(dest)
            if job is None:
                session.add(
                    ForwardJob(study_instance_uid=study_uid, destination=dest, priority=priority)
                )
            elif job.state in ("done", "dead") or job.priority != priority:
                job.state = "pending" if job.state != "running" else job.state
                job.attempts = 0 if job.state == "pending" else job.attempts
                job.priority = priority
                job.next_attempt_at = utcnow()
                job.updated_at = utcnow()
    log.info(
        "study_committed",
        study_uid=study_uid,
        instances=len(request.instances),
        service_level=request.service_level,
        destinations=len(destinations),
    )
