"""The forwarding queue on real PostgreSQL with several workers: per-destination limits that hold
across workers, STAT preempting routine work at batch boundaries, leases taken over after a
worker dies. The archive here is a recording double (slow on purpose); the queue is real."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from relaypacs_dev.generate import generate_study
from relaypacs_hub.db.models import ForwardJob
from relaypacs_hub.forwarding.base import (
    BatchCallback,
    DeliveryResult,
    OutgoingInstance,
    batch_callback,
)
from relaypacs_hub.forwarding.worker import ForwardingWorker
from relaypacs_shared.errors import DestinationError
from tests.hub.conftest import HubClient, hub_settings, write_destinations

pytestmark = pytest.mark.integration


class SlowArchive:
    """Accepts everything, one batch at a time with a pause; records what it was sent."""

    def __init__(self, name: str, batch: int = 5, pause: float = 0.05) -> None:
        self.name = name
        self.batch = batch
        self.pause = pause
        self.received: list[str] = []
        self.finished: list[str] = []  # study UIDs, in the order their last batch arrived
        self.in_flight = 0
        self.max_in_flight = 0

    async def deliver(
        self,
        study_instance_uid: str,
        instances: Sequence[OutgoingInstance],
        on_batch: BatchCallback | None = None,
    ) -> DeliveryResult:
        go_on = batch_callback(on_batch)
        result = DeliveryResult()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for start in range(0, len(instances), self.batch):
                await asyncio.sleep(self.pause)
                batch = DeliveryResult(
                    {i.sop_instance_uid for i in instances[start : start + self.batch]}
                )
                self.received += sorted(batch.delivered)
                result.merge(batch)
                last = start + self.batch >= len(instances)
                if last:
                    self.finished.append(study_instance_uid)
                if not await go_on(batch) and not last:
                    result.stopped = True
                    break
        finally:
            self.in_flight -= 1
        return result

    async def confirm(self, study_instance_uid: str, sop_instance_uids: Sequence[str]) -> set[str]:
        return set(self.received) & set(sop_instance_uids)

    async def probe(self) -> str:
        return "ok"

    async def aclose(self) -> None:
        return None


async def api_only_hub(tmp_path: Path, make_hub: Any, pg_url: str, **settings: Any) -> HubClient:
    dests = write_destinations(
        tmp_path / "d.toml", {"name": "slow", "type": "folder", "path": str(tmp_path / "unused")}
    )
    return await make_hub(  # type: ignore[no-any-return]
        hub_settings(tmp_path, dests, database_url=pg_url, worker_enabled=False, **settings)
    )


async def drain(workers: list[ForwardingWorker], until: Any, timeout: float = 60) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        await asyncio.wait_for(until(), timeout)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def job_states(hub: HubClient) -> dict[str, str]:
    async with hub.state.sessionmaker() as session:
        rows = await session.scalars(select(ForwardJob))
        return {j.study_instance_uid: j.state for j in rows}


async def all_done(hub: HubClient, count: int) -> None:
    while True:
        states = await job_states(hub)
        if len(states) == count and set(states.values()) == {"done"}:
            return
        await asyncio.sleep(0.05)


async def test_a_destination_limit_holds_across_three_workers(
    tmp_path: Path, make_hub: Any, pg_url: str
) -> None:
    hub = await api_only_hub(tmp_path, make_hub, pg_url)
    studies = [
        generate_study(tmp_path / f"s{i}", instances=4, seed=60 + i, rows=16, columns=16)
        for i in range(9)
    ]
    for study in studies:
        await hub.send(study)
    archive = SlowArchive("slow", batch=2, pause=0.05)
    state = hub.state
    workers = [
        ForwardingWorker(
            state.settings, state.sessionmaker, state.store, {"slow": archive}, limits={"slow": 2}
        )
        for _ in range(3)
    ]
    await drain(workers, lambda: all_done(hub, 9))
    assert archive.max_in_flight == 2  # three workers of 4 slots each, yet 2 at a time
    assert sorted(archive.received) == sorted(u for s in studies for u in s.sop_instance_uids)


async def test_stat_preempts_routine_at_a_batch_boundary_and_nothing_is_sent_twice(
    tmp_path: Path, make_hub: Any, pg_url: str
) -> None:
    hub = await api_only_hub(tmp_path, make_hub, pg_url)
    routine = generate_study(tmp_path / "r", instances=60, seed=70, rows=16, columns=16)
    stat = generate_study(tmp_path / "s", instances=4, seed=71, rows=16, columns=16)
    await hub.send(routine)
    await hub.upload(stat)
    archive = SlowArchive("slow", batch=5, pause=0.05)
    state = hub.state
    workers = [
        ForwardingWorker(
            state.settings, state.sessionmaker, state.store, {"slow": archive}, limits={"slow": 1}
        )
        for _ in range(2)
    ]

    async def scenario() -> None:
        while len(archive.received) < 10:  # noqa: ASYNC110 - routine is two batches in
            await asyncio.sleep(0.01)
        await hub.commit(stat, level="stat")
        for w in workers:
            w.wake()
        await all_done(hub, 2)

    await drain(workers, scenario)
    assert archive.finished == [stat.study_instance_uid, routine.study_instance_uid]
    # The routine study stepped aside and resumed where it stopped: each instance once.
    assert sorted(archive.received) == sorted(routine.sop_instance_uids + stat.sop_instance_uids)
    jobs = {j["study_instance_uid"]: j for j in await hub.jobs()}
    assert jobs[routine.study_instance_uid]["attempts"] == 1  # yielding is not a failure
    assert jobs[stat.study_instance_uid]["priority"] == 100


async def test_a_dead_workers_job_is_taken_over_after_its_lease(
    tmp_path: Path, make_hub: Any, pg_url: str
) -> None:
    hub = await api_only_hub(tmp_path, make_hub, pg_url, job_lease_seconds=1.0)
    study = generate_study(tmp_path / "s", instances=3, seed=80, rows=16, columns=16)
    await hub.send(study)
    state = hub.state
    archive = SlowArchive("slow")

    def worker() -> ForwardingWorker:
        return ForwardingWorker(state.settings, state.sessionmaker, state.store, {"slow": archive})

    crashed, survivor = worker(), worker()
    job = await crashed.claim()  # ...and its process dies here
    assert job is not None
    assert await survivor.claim() is None  # leased: nobody else may take it
    await asyncio.sleep(1.2)
    taken = await survivor.claim()
    assert taken is not None and taken.id == job.id and taken.lease_owner == survivor.worker_id
    await survivor.process(taken)
    assert (await job_states(hub)) == {study.study_instance_uid: "done"}
    # The first worker comes back to life: it may no longer write to the job.
    await crashed._fail(job, "too late", transient=True)
    (row,) = await hub.jobs()
    assert row["state"] == "done" and row["last_error"] is None


class FailingArchive(SlowArchive):
    async def deliver(
        self,
        study_instance_uid: str,
        instances: Sequence[OutgoingInstance],
        on_batch: BatchCallback | None = None,
    ) -> DeliveryResult:
        raise DestinationError("the archive closed the connection")


async def test_a_database_outage_at_the_end_of_a_job_is_logged_and_outlived(
    tmp_path: Path, make_hub: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL outage mid-job once left the job "running" for its whole lease, with
    nothing logged: the failure handler's own write failed and its exception was lost. The
    outage is injected into the outcome write (a real server cannot be made to fail on that one
    statement on demand)."""
    import structlog

    from relaypacs_hub.forwarding import worker as worker_module

    monkeypatch.setattr(worker_module, "SETTLE_FIRST_RETRY", 0.05)
    hub = await api_only_hub(tmp_path, make_hub, pg_url)
    study = generate_study(tmp_path / "s", instances=2, seed=81, rows=16, columns=16)
    await hub.send(study)
    state = hub.state
    w = ForwardingWorker(
        state.settings, state.sessionmaker, state.store, {"slow": FailingArchive("slow")}
    )
    real_fail = w._fail
    outage = {"left": 2}

    async def fail_during_outage(job: Any, reason: str, *, transient: bool) -> None:
        if outage["left"]:
            outage["left"] -= 1
            raise ConnectionRefusedError("connection to the database refused")
        await real_fail(job, reason, transient=transient)

    monkeypatch.setattr(w, "_fail", fail_during_outage)
    job = await w.claim()
    assert job is not None
    with structlog.testing.capture_logs() as logs:
        await w.process(job)
    retries = [e for e in logs if e["event"] == "job_outcome_write_failed"]
    assert len(retries) == 2 and retries[0]["error_type"] == "ConnectionRefusedError"
    assert retries[0]["outcome"] == "failed"
    # Once the database answers, the outcome is written: pending for a retry, not "running".
    (row,) = await hub.jobs()
    assert row["state"] == "pending"
    assert "closed the connection" in row["last_error"]
