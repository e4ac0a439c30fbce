"""Destinations and their health: queue (jobs per state), last confirmed delivery, last error,
recent time to PACS, and on request whether the archive answers."""

from __future__ import annotations

import asyncio
from datetime import datetime
from statistics import median

from pydantic import BaseModel
from sqlalchemy import func, select

from relaypacs_hub.db.models import ForwardJob, JobState
from relaypacs_hub.forwarding.base import Destination
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services.errors import Unknown
from relaypacs_shared.errors import RelayError

PROBE_TIMEOUT_SECONDS = 15.0
RECENT_JOBS = 100


class Probe(BaseModel):
    reachable: bool
    detail: str


class DestinationHealth(BaseModel):
    name: str
    type: str
    profile: str | None
    max_concurrent_jobs: int
    jobs: dict[str, int]
    last_confirmed_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    time_to_pacs_median_seconds: float | None
    time_to_pacs_max_seconds: float | None
    probe: Probe | None = None


async def _probe(dest: Destination) -> Probe:
    try:
        detail = await asyncio.wait_for(dest.probe(), PROBE_TIMEOUT_SECONDS)
    except TimeoutError:
        return Probe(reachable=False, detail=f"no answer within {PROBE_TIMEOUT_SECONDS:.0f} s")
    except RelayError as exc:
        return Probe(reachable=False, detail=str(exc))
    except Exception as exc:  # a library failing in an unforeseen way is still "unreachable"
        return Probe(reachable=False, detail=f"{type(exc).__name__}: {exc}")
    return Probe(reachable=True, detail=detail)


async def health(hub: HubRuntime, name: str, probe: bool) -> DestinationHealth:
    """One destination's queue, last delivery and error, time to PACS; with ``probe`` a live
    check. 404 ``unknown_destination`` for a name not configured."""
    delivery = hub.delivery
    if name not in delivery.configs:
        raise Unknown("unknown_destination", f"no destination named {name!r}")
    config = delivery.configs[name]
    async with hub.sessionmaker() as session:
        counts = dict(
            (
                await session.execute(
                    select(ForwardJob.state, func.count())
                    .where(ForwardJob.destination == name)
                    .group_by(ForwardJob.state)
                )
            ).all()
        )
        last_confirmed = await session.scalar(
            select(func.max(ForwardJob.completed_at)).where(ForwardJob.destination == name)
        )
        failing = await session.scalar(
            select(ForwardJob)
            .where(ForwardJob.destination == name)
            .where(ForwardJob.last_error.is_not(None))
            .order_by(ForwardJob.updated_at.desc())
            .limit(1)
        )
        times = [
            t
            for t in await session.scalars(
                select(ForwardJob.time_to_pacs_seconds)
                .where(ForwardJob.destination == name)
                .where(ForwardJob.time_to_pacs_seconds.is_not(None))
                .order_by(ForwardJob.completed_at.desc())
                .limit(RECENT_JOBS)
            )
            if t is not None
        ]
    return DestinationHealth(
        name=name,
        type=config.type,
        profile=getattr(config, "profile", None),
        max_concurrent_jobs=config.max_concurrent_jobs,
        jobs={s: int(counts.get(s, 0)) for s in tuple(JobState)},
        last_confirmed_at=last_confirmed,
        last_error=failing.last_error if failing else None,
        last_error_at=failing.updated_at if failing else None,
        time_to_pacs_median_seconds=median(times) if times else None,
        time_to_pacs_max_seconds=max(times) if times else None,
        probe=await _probe(delivery.destinations[name]) if probe else None,
    )


async def list_health(hub: HubRuntime, probe: bool) -> list[DestinationHealth]:
    return list(
        await asyncio.gather(*(health(hub, name, probe) for name in sorted(hub.delivery.configs)))
    )
