"""Delivery to real archives through the hub: two Orthancs and dcmtk's storescp.

Fan-out with confirmation, an archive down and back, a destination that never works until it is
fixed, Orthanc's STOW-RS quirks, and STAT jumping a queue of routine work.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs_dev.generate import GeneratedStudy, generate_study
from tests.hub.conftest import (
    FaultProxy,
    HubClient,
    RestartableOrthanc,
    hub_settings,
    write_destinations,
)
from tests.support.orthanc import free_port
from tests.support.storescp import StoreSCP, storescp_available

pytestmark = pytest.mark.integration


def orthanc_dest(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "dicomweb", "profile": "orthanc", "url": url, **extra}


def scp_dest(name: str, scp: StoreSCP, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "dimse",
        "host": "127.0.0.1",
        "port": scp.port,
        "called_aet": scp.aet,
        "confirm": "c-store",
        "timeout_seconds": 5,
        **extra,
    }


def held_by_orthanc(orthanc: RestartableOrthanc, study: GeneratedStudy) -> dict[str, bytes]:
    out = {}
    for uid in study.sop_instance_uids:
        if orthanc.instance_id(uid) is not None:
            out[uid] = orthanc.fetch_instance_file(uid)
    return out


def originals(study: GeneratedStudy) -> dict[str, bytes]:
    return {
        uid: f.read_bytes() for uid, f in zip(study.sop_instance_uids, study.files, strict=True)
    }


@pytest.mark.skipif(not storescp_available(), reason="needs dcmtk's storescp")
async def test_fan_out_to_two_orthancs_and_a_storescp_each_confirmed(
    tmp_path: Path,
    make_hub: Any,
    orthanc: RestartableOrthanc,
    orthanc_b: RestartableOrthanc,
    storescp: StoreSCP,
) -> None:
    dests = write_destinations(
        tmp_path / "d.toml",
        orthanc_dest("orthanc-a", orthanc.http_url, max_batch_instances=4),
        orthanc_dest("orthanc-b", orthanc_b.dicomweb_url),
        scp_dest("storescp", storescp),
    )
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests))
    ct = generate_study(tmp_path / "ct", instances=9, series=2, seed=21, rows=32, columns=32)
    mr = generate_study(tmp_path / "mr", modality="MR", instances=4, seed=22, rows=32, columns=32)
    for study in (ct, mr):
        await hub.send(study)
    for study in (ct, mr):
        status = await hub.wait_delivered(study.study_instance_uid)
        n = len(study.sop_instance_uids)
        assert [
            (d["destination"], d["delivered_instances"], d["confirmed_instances"])
            for d in status["destinations"]
        ] == [("orthanc-a", n, n), ("orthanc-b", n, n), ("storescp", n, n)]
        assert held_by_orthanc(orthanc, study) == originals(study)
        assert held_by_orthanc(orthanc_b, study) == originals(study)
    assert storescp.received() == dict.fromkeys(ct.sop_instance_uids + mr.sop_instance_uids, 1)
    assert orthanc.instance_count() == orthanc_b.instance_count() == 13


@pytest.mark.skipif(not storescp_available(), reason="needs dcmtk's storescp")
async def test_archives_down_for_a_while_then_back_nothing_lost(
    tmp_path: Path, make_hub: Any, orthanc: RestartableOrthanc, storescp: StoreSCP
) -> None:
    dests = write_destinations(
        tmp_path / "d.toml",
        orthanc_dest("orthanc", orthanc.http_url, max_batch_instances=3, timeout_seconds=5),
        scp_dest("storescp", storescp),
    )
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests, forward_backoff_max_seconds=0.5))
    orthanc.pause()
    storescp.stop()
    study = generate_study(tmp_path / "s", instances=8, series=2, seed=23, rows=32, columns=32)
    await hub.send(study)
    status = await hub.wait_for(
        study.study_instance_uid,
        lambda b: all(d["attempts"] >= 2 for d in b["destinations"]),
        60,
        "retries while the archives are down",
    )
    errors = {d["destination"]: d["last_error"] for d in status["destinations"]}
    assert "ConnectError" in errors["orthanc"]
    assert "no association" in errors["storescp"]
    assert all(d["state"] in ("pending", "running") for d in status["destinations"])

    orthanc.resume()
    storescp.start()
    await hub.wait_delivered(study.study_instance_uid, timeout=60)
    assert held_by_orthanc(orthanc, study) == originals(study)
    assert storescp.received() == dict.fromkeys(study.sop_instance_uids, 1)


async def test_a_destination_that_never_works_is_dead_then_delivers_after_a_retry(
    tmp_path: Path, make_hub: Any, orthanc: RestartableOrthanc
) -> None:
    port = free_port()  # the archive's address, where nothing answers yet
    dests = write_destinations(
        tmp_path / "d.toml",
        orthanc_dest("pacs", f"http://127.0.0.1:{port}", timeout_seconds=3),
    )
    hub: HubClient = await make_hub(
        hub_settings(tmp_path, dests, forward_max_attempts=3, forward_backoff_max_seconds=0.2)
    )
    study = generate_study(tmp_path / "s", instances=5, seed=24, rows=32, columns=32)
    await hub.send(study)
    await hub.wait_for(
        study.study_instance_uid, lambda b: b["destinations"][0]["state"] == "dead", 60, "dead"
    )
    (dead,) = await hub.jobs(state="dead")
    assert dead["attempts"] == 3
    assert "ConnectError" in dead["last_error"] and f":{port}/" in dead["last_error"]

    fixed = FaultProxy(orthanc.http_url, port=port).start()  # the archive is back
    try:
        r = await hub.post_admin("/api/v1/jobs/retry-dead", params={"destination": "pacs"})
        assert r.json() == {"retried": [dead["id"]]}
        await hub.wait_delivered(study.study_instance_uid)
        assert held_by_orthanc(orthanc, study) == originals(study)
        assert await hub.jobs(state="dead") == []
    finally:
        fixed.stop()


async def test_orthanc_duplicate_counts_as_delivered(
    tmp_path: Path, make_hub: Any, orthanc: RestartableOrthanc
) -> None:
    study = generate_study(tmp_path / "s", instances=4, seed=25, rows=32, columns=32)
    # Someone already sent one instance straight to the archive.
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{orthanc.http_url}/instances", content=study.files[0].read_bytes())
        r.raise_for_status()
    dests = write_destinations(tmp_path / "d.toml", orthanc_dest("pacs", orthanc.http_url))
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests))
    await hub.send(study)
    status = await hub.wait_delivered(study.study_instance_uid)
    assert status["destinations"][0]["attempts"] == 1
    assert status["destinations"][0]["confirmed_instances"] == 4
    assert orthanc.instance_count() == 4
    assert held_by_orthanc(orthanc, study) == originals(study)


async def test_orthanc_400_stores_the_good_ones_and_only_the_refused_one_goes_again(
    tmp_path: Path, make_hub: Any, orthanc: RestartableOrthanc, proxy: FaultProxy
) -> None:
    dests = write_destinations(tmp_path / "d.toml", orthanc_dest("pacs", proxy.url))
    hub: HubClient = await make_hub(
        hub_settings(tmp_path, dests, forward_max_attempts=2, forward_backoff_max_seconds=0.2)
    )
    study = generate_study(tmp_path / "s", instances=5, seed=26, rows=32, columns=32)
    await hub.upload(study)
    # The hub's copy of one instance goes bad in its store (same size, not DICOM any more).
    store_root: Path = hub.state.store.root
    victim = study.files[2]
    key = hashlib.sha256(victim.read_bytes()).hexdigest()
    (stored,) = store_root.glob(f"sha256/*/{key}")
    good = stored.read_bytes()
    stored.write_bytes(b"\0" * len(good))
    await hub.commit(study)
    await hub.wait_for(
        study.study_instance_uid, lambda b: b["destinations"][0]["state"] == "dead", 60, "dead"
    )
    assert proxy.posts[0][1] == 400  # Orthanc refused the request...
    held = held_by_orthanc(orthanc, study)
    assert set(held) == set(study.sop_instance_uids) - {study.sop_instance_uids[2]}  # ...but kept 4
    (dead,) = await hub.jobs(state="dead")
    assert dead["last_error"] == (
        "1 of 5 instance(s) not confirmed by the archive: archive did not acknowledge the instance"
    )
    stored.write_bytes(good)  # repaired
    sent_before = len(proxy.posts)
    await hub.post_admin(f"/api/v1/jobs/{dead['id']}/retry")
    await hub.wait_delivered(study.study_instance_uid)
    assert [p[2] for p in proxy.posts[sent_before:]] == [1]  # only the refused instance again
    assert held_by_orthanc(orthanc, study) == originals(study)


async def test_orthanc_200_with_empty_sequences_is_not_a_delivery(
    tmp_path: Path, make_hub: Any, orthanc: RestartableOrthanc, proxy: FaultProxy
) -> None:
    dests = write_destinations(tmp_path / "d.toml", orthanc_dest("pacs", proxy.url))
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests))
    study = generate_study(tmp_path / "s", instances=3, seed=27, rows=32, columns=32)
    proxy.mangle_boundary = 1  # Orthanc cannot split the first body: 200, nothing stored
    await hub.send(study)
    status = await hub.wait_delivered(study.study_instance_uid)
    assert proxy.posts[0][1] == 200
    assert status["destinations"][0]["attempts"] == 2
    assert held_by_orthanc(orthanc, study) == originals(study)


async def test_stat_jumps_a_queue_of_500_routine_instances(
    tmp_path: Path, make_hub: Any, orthanc: RestartableOrthanc, proxy: FaultProxy
) -> None:
    proxy.delay_seconds = 0.25  # a slow archive: a quarter of a second per STOW-RS request
    dests = write_destinations(
        tmp_path / "d.toml",
        orthanc_dest("pacs", proxy.url, max_batch_instances=10, max_concurrent_jobs=1),
    )
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests))
    big = generate_study(tmp_path / "big", instances=400, seed=30, rows=32, columns=32)
    small = [
        generate_study(tmp_path / f"r{i}", instances=20, seed=31 + i, rows=32, columns=32)
        for i in range(5)
    ]
    stat = generate_study(tmp_path / "stat", instances=10, seed=40, rows=32, columns=32)
    for study in (big, *small, stat):
        await hub.upload(study)
    for study in (big, *small):
        await hub.commit(study)
    deadline = time.monotonic() + 30
    while len(proxy.posts) < 2:  # the routine backlog is moving
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    committed = time.monotonic()
    await hub.commit(stat, level="stat")
    await hub.wait_delivered(stat.study_instance_uid, timeout=30)
    stat_took = time.monotonic() - committed
    routine_done = [
        (await hub.status(s.study_instance_uid))["destinations"][0]["state"] for s in (big, *small)
    ]
    assert "done" not in routine_done, routine_done
    # One batch of the big study finishing, then the STAT study's one batch (plus polling).
    assert stat_took < 5, stat_took
    for study in (big, *small):
        await hub.wait_delivered(study.study_instance_uid, timeout=120)
    jobs = {j["study_instance_uid"]: j for j in await hub.jobs(limit=10)}
    stat_job = jobs[stat.study_instance_uid]
    assert stat_job["priority"] == 100
    assert all(
        j["completed_at"] > stat_job["completed_at"]
        for uid, j in jobs.items()
        if uid != stat.study_instance_uid
    )
    assert orthanc.instance_count() == 510
    assert held_by_orthanc(orthanc, stat) == originals(stat)
