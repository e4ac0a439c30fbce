"""Commit a study: every instance of the agent's manifest is held with the manifest's hash.

A partial study is never forwarded. On commit the routing rules decide the destinations; each
gets a forwarding job (or has its job re-opened), at the priority the rules give, held when a rule
says so. A later commit with more instances (a late series) is a follow-up of the same study: only
what a destination does not hold yet is sent again.

Callers: the instance-upload API (``POST /api/v1/studies/{uid}/commit``) and the segment path.
Both pass the hub's :class:`~relaypacs_hub.routing.router.Router` (``HubRuntime.delivery.router``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub import metrics
from relaypacs_hub.db.models import ForwardJob, Instance, JobState, Study, StudyRoute, utcnow
from relaypacs_hub.ingest.receive import held_instances
from relaypacs_hub.routing.router import Router
from relaypacs_shared.errors import ProtocolError
from relaypacs_shared.routing import Decision, route_everywhere
from relaypacs_shared.wire import CommitRequest

log = structlog.get_logger("relaypacs.hub.commit")


class StudyIncomplete(ProtocolError):
    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"{len(missing)} instance(s) of the manifest are not held by the hub")
        self.missing = missing


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


async def commit_study(
    sessionmaker: async_sessionmaker[AsyncSession],
    study_uid: str,
    request: CommitRequest,
    router: Router | Sequence[str],
    *,
    facility: str | None = None,
    agent_received_at: datetime | None = None,
    now: datetime | None = None,
) -> Decision:
    """Commit the study and create its forwarding jobs; return the routing decision.

    ``router`` is the hub's Router (rules in force); a plain list of destination names routes
    to all of them (no rules). ``facility`` and ``agent_received_at`` come from the agent's
    manifest (or its credential) when known: rules match on the facility, and time to PACS is
    measured from the agent's receipt (else from the hub's first receipt).
    """
    async with sessionmaker() as session:
        held = await held_instances(session, study_uid)
        missing = [
            e.sop_instance_uid
            for e in request.instances
            if held.get(e.sop_instance_uid) != e.sha256
        ]
        if missing:
            raise StudyIncomplete(missing)
        existing = await session.get(Study, study_uid)
        first = existing is None or existing.committed_at is None
        level = (
            "stat"
            if request.service_level == "stat"
            or (existing is not None and existing.service_level == "stat")
            else "routine"
        )
    # Routing reads headers from the object store: do it before the write transaction.
    if isinstance(router, Router):
        routing = await router.decide(study_uid, service_level=level, facility=facility, now=now)
        decision, version, known = routing.decision, routing.rule_set_version, router.destinations
    else:
        decision, version, known = route_everywhere(router, level), None, sorted(router)
    unknown = [r.destination for r in decision.routes if r.destination not in known]
    if unknown:
        log.error("route_to_unknown_destination", study_uid=study_uid, destinations=unknown)
    routes = [r for r in decision.routes if r.destination in known]

    async with sessionmaker() as session, session.begin():
        stamp = utcnow()
        manifest = {e.sop_instance_uid for e in request.instances}
        newly = await session.execute(
            update(Instance)
            .where(Instance.study_instance_uid == study_uid)
            .where(Instance.sop_instance_uid.in_(manifest))
            .where(Instance.committed_at.is_(None))
            .values(committed_at=stamp)
        )
        added = int(getattr(newly, "rowcount", 0) or 0)
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
        study.committed_at = stamp
        study.service_level = level
        # A follow-up commit without them keeps what the first one said.
        if request.clinical_history:
            study.clinical_history = request.clinical_history
        if request.referring_clinician:
            study.referring_clinician = request.referring_clinician
        await _record_route(
            session, study_uid, decision, version, facility, _naive_utc(agent_received_at), stamp
        )
        jobs = {
            j.destination: j
            for j in (
                await session.scalars(
                    select(ForwardJob).where(ForwardJob.study_instance_uid == study_uid)
                )
            )
        }
        for route in routes:
            hold_rule = route.held_by if route.held else None
            target = JobState.HELD if route.held else JobState.PENDING
            job = jobs.get(route.destination)
            if job is None:
                session.add(
                    ForwardJob(
                        study_instance_uid=study_uid,
                        destination=route.destination,
                        priority=route.priority,
                        state=target,
                        held_by=hold_rule,
                    )
                )
                continue
            unchanged = added == 0 and job.priority == route.priority
            if job.state == JobState.RUNNING:
                job.priority = route.priority  # the worker re-checks the study when it finishes
            elif job.state == JobState.DONE and unchanged and not route.held:
                continue  # the same manifest again: nothing new to deliver
            elif job.state == JobState.HELD and not route.held:
                job.state, job.held_by = JobState.PENDING, None
            elif job.state in (JobState.DONE, JobState.DEAD, JobState.PENDING):
                if job.state != JobState.PENDING:
                    job.attempts = 0
                job.state, job.held_by = target, hold_rule
            job.priority = route.priority
            job.next_attempt_at = stamp
            job.updated_at = stamp
    metrics.committed(facility, level, first=first)
    log.info(
        "study_committed",
        study_uid=study_uid,
        instances=len(request.instances),
        new_instances=added,
        service_level=level,
        destinations=[r.destination for r in routes],
        held=[r.destination for r in routes if r.held],
        rules=list(decision.matched_rules),
        rule_set_version=version,
    )
    if not routes:
        log.warning("study_unrouted", study_uid=study_uid, rule_set_version=version)
    return decision


async def _record_route(
    session: AsyncSession,
    study_uid: str,
    decision: Decision,
    version: int | None,
    facility: str | None,
    agent_received_at: datetime | None,
    stamp: datetime,
) -> None:
    row = await session.get(StudyRoute, study_uid)
    if row is None:
        row = StudyRoute(study_instance_uid=study_uid)
        session.add(row)
    if facility is not None:
        row.facility = facility[:64]
    if agent_received_at is not None and (
        row.agent_received_at is None or agent_received_at < row.agent_received_at
    ):
        row.agent_received_at = agent_received_at
    row.rule_set_version = version
    row.matched_rules_json = json.dumps(list(decision.matched_rules))
    row.destinations_json = json.dumps(list(decision.destinations))
    row.unrouted = not decision.routes
    row.routed_at = stamp
