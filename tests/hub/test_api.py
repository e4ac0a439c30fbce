"""The hub's agent API in one process (ASGI transport), on SQLite and on real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import func, select

from relaypacs_dev.generate import generate_study
from relaypacs_hub.config import HubSettings
from relaypacs_hub.db.models import ForwardJob, Instance, Study
from relaypacs_hub.main import create_app
from relaypacs_shared.wire import format_content_digest


def _dest_file(tmp: Path, archive: Path) -> Path:
    p = tmp / "destinations.toml"
    p.write_text(f'[[destinations]]\nname = "archive"\ntype = "folder"\npath = "{archive}"\n')
    return p


class Hub:
    def __init__(self, app, client: httpx.AsyncClient) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.client = client

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.app.state.hub

    async def put(self, path: Path, digest: str | None = None, **override: str) -> httpx.Response:
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study = override.get("study", ds.StudyInstanceUID)
        sop = override.get("sop", ds.SOPInstanceUID)
        headers = {}
        if digest != "none":
            headers["Content-Digest"] = digest or format_content_digest(
                hashlib.sha256(data).hexdigest()
            )
        return await self.client.put(
            f"/api/v1/studies/{study}/instances/{sop}", content=data, headers=headers
        )

    async def commit(self, study: str, files: list[Path], level: str = "routine") -> httpx.Response:
        manifest = []
        for f in files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            manifest.append(
                {
                    "sop_instance_uid": ds.SOPInstanceUID,
                    "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                }
            )
        return await self.client.post(
            f"/api/v1/studies/{study}/commit",
            json={"service_level": level, "instances": manifest},
        )

    async def wait_done(self, study: str, timeout: float = 20) -> dict:  # type: ignore[type-arg]
        async def poll() -> dict:  # type: ignore[type-arg]
            while True:
                body = (await self.client.get(f"/api/v1/studies/{study}")).json()
                if body["destinations"] and all(d["state"] == "done" for d in body["destinations"]):
                    return body
                await asyncio.sleep(0.1)

        return await asyncio.wait_for(poll(), timeout)


async def _hub(settings: HubSettings) -> AsyncIterator[Hub]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            yield Hub(app, client)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        destinations_file=_dest_file(tmp_path, tmp_path / "archive"),
        worker_poll_seconds=0.1,
        anonymous_agents=True,
    )
    async for h in _hub(settings):
        yield h


@pytest.fixture
def study(tmp_path: Path):  # type: ignore[no-untyped-def]
    return generate_study(tmp_path / "src", instances=6, series=2, seed=7, rows=64, columns=64)


async def test_wrong_digest_is_refused_and_nothing_is_kept(hub: Hub, study) -> None:  # type: ignore[no-untyped-def]
    r = await hub.put(study.files[0], digest=format_content_digest("00" * 32))
    assert r.status_code == 400
    assert r.json()["code"] == "checksum_mismatch"
    async with hub.state.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Instance)) == 0
    objects = [p for p in hub.state.store.root.rglob("*") if p.is_file()]
    assert objects == []


async def test_missing_digest_is_a_clear_error(hub: Hub, study) -> None:  # type: ignore[no-untyped-def]
    r = await hub.put(study.files[0], digest="none")
    assert r.status_code == 400
    assert r.json()["code"] == "bad_digest"
    assert "Content-Digest" in r.json()["detail"]


async def test_body_that_is_not_dicom_is_refused(hub: Hub, study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    body = b"this is not an image" * 10
    ds = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    r = await hub.client.put(
        f"/api/v1/studies/{ds.StudyInstanceUID}/instances/{ds.SOPInstanceUID}",
        content=body,
        headers={"Content-Digest": format_content_digest(hashlib.sha256(body).hexdigest())},
    )
    assert r.status_code == 422
    assert r.json()["code"] == "not_dicom"


async def test_uids_must_match_the_url(hub: Hub, study) -> None:  # type: ignore[no-untyped-def]
    r = await hub.put(study.files[0], sop="1.2.3.4")
    assert r.status_code == 422
    assert r.json()["code"] == "uid_mismatch"
    r = await hub.put(study.files[0], sop="1.2.03")
    assert r.status_code == 422
    assert r.json()["code"] == "malformed_uid"


async def test_duplicate_and_conflict(hub: Hub, study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = await hub.put(study.files[0])
    assert first.status_code == 201 and first.json()["status"] == "stored"
    again = await hub.put(study.files[0])
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    ds = pydicom.dcmread(study.files[0])
    ds.InstitutionName = "ANOTHER HOSPITAL"
    other = tmp_path / "other.dcm"
    ds.save_as(other, enforce_file_format=True)
    r = await hub.put(other)
    assert r.status_code == 409
    assert r.json()["code"] == "conflict"


async def test_commit_needs_every_instance_then_delivers(hub: Hub, study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for f in study.files[:-1]:
        assert (await hub.put(f)).status_code == 201
    r = await hub.commit(study.study_instance_uid, study.files)
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "incomplete"
    assert body["missing"] == [study.sop_instance_uids[-1]]
    assert not (tmp_path / "archive").exists(), "a partial study must never be forwarded"

    assert (await hub.put(study.files[-1])).status_code == 201
    r = await hub.commit(study.study_instance_uid, study.files)
    assert r.status_code == 200
    assert r.json()["state"] == "committed"
    status = await hub.wait_done(study.study_instance_uid)
    assert status["destinations"][0]["confirmed_instances"] == 6
    for (
        f,
        sop,
    ) in zip(study.files, study.sop_instance_uids, strict=True):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out = tmp_path / "archive" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{sop}.dcm"
        assert out.read_bytes() == f.read_bytes()


async def test_late_instance_is_a_follow_up_of_the_same_study(hub: Hub, tmp_path: Path) -> None:
    st = generate_study(tmp_path / "src", instances=4, seed=8, rows=64, columns=64)
    for f in st.files[:3]:
        await hub.put(f)
    assert (await hub.commit(st.study_instance_uid, st.files[:3])).status_code == 200
    await hub.wait_done(st.study_instance_uid)
    archive = tmp_path / "archive" / st.study_instance_uid
    assert len(list(archive.glob("*/*.dcm"))) == 3
    first_mtimes = {p: p.stat().st_mtime_ns for p in archive.glob("*/*.dcm")}

    await hub.put(st.files[3])
    r = await hub.commit(st.study_instance_uid, st.files)
    assert r.status_code == 200
    status = await hub.wait_done(st.study_instance_uid)
    assert status["instance_count"] == 4
    assert len(list(archive.glob("*/*.dcm"))) == 4
    # Only the late instance was written again.
    assert {p: p.stat().st_mtime_ns for p in first_mtimes} == first_mtimes
    async with hub.state.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Study)) == 1
        assert await s.scalar(select(func.count()).select_from(ForwardJob)) == 1


async def test_failing_destination_retries_then_parks_the_job_dead(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the archive folder should be")
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        destinations_file=_dest_file(tmp_path, blocked),
        worker_poll_seconds=0.05,
        forward_max_attempts=2,
        forward_backoff_max_seconds=0.1,
        anonymous_agents=True,
    )
    st = generate_study(tmp_path / "src", instances=2, seed=9, rows=64, columns=64)
    async for hub in _hub(settings):
        for f in st.files:
            await hub.put(f)
        await hub.commit(st.study_instance_uid, st.files)

        async def dead() -> dict:  # type: ignore[type-arg]
            while True:
                body = (await hub.client.get(f"/api/v1/studies/{st.study_instance_uid}")).json()
                if body["destinations"][0]["state"] == "dead":
                    return body
                await asyncio.sleep(0.05)

        body = await asyncio.wait_for(dead(), 20)
        dest = body["destinations"][0]
        assert dest["attempts"] == 2
        assert "cannot write" in dest["last_error"]


async def test_agent_token_is_required_when_configured(tmp_path: Path, study) -> None:  # type: ignore[no-untyped-def]
    settings = HubSettings(data_dir=tmp_path / "hub", agent_token="x" * 40)
    async for hub in _hub(settings):
        r = await hub.put(study.files[0])
        assert r.status_code == 401
        hub.client.headers["Authorization"] = "Bearer " + "x" * 40
        r = await hub.put(study.files[0])
        assert r.status_code == 201


def test_production_refuses_a_missing_agent_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="AGENT_TOKEN"):
        HubSettings(environment="production", data_dir=tmp_path)


@pytest.mark.integration
async def test_postgresql_queue_hands_each_job_to_one_worker(tmp_path: Path, pg_url: str) -> None:
    """Two workers claiming at once on PostgreSQL never get the same job (SKIP LOCKED)."""
    from relaypacs_hub.forwarding.worker import ForwardingWorker

    settings = HubSettings(
        data_dir=tmp_path / "hub",
        database_url=pg_url,
        destinations_file=_dest_file(tmp_path, tmp_path / "archive"),
        worker_enabled=False,
        anonymous_agents=True,
    )
    studies = [
        generate_study(tmp_path / f"s{i}", instances=1, seed=50 + i, rows=32, columns=32)
        for i in range(12)
    ]
    async for hub in _hub(settings):
        for st in studies:
            await hub.put(st.files[0])
            assert (await hub.commit(st.study_instance_uid, st.files)).status_code == 200
        from relaypacs_hub.main import build_destinations

        workers = [
            ForwardingWorker(
                settings, hub.state.sessionmaker, hub.state.store, build_destinations(settings)
            )
            for _ in range(2)
        ]

        async def drain(w: ForwardingWorker) -> list[str]:
            got = []
            while (job := await w.claim()) is not None:
                got.append(job.study_instance_uid)
            return got

        a, b = await asyncio.gather(drain(workers[0]), drain(workers[1]))
        assert sorted(a + b) == sorted(st.study_instance_uid for st in studies)
        assert set(a).isdisjoint(b)
