"""The hub's Prometheus endpoint: who may scrape it, agents' heartbeats exported per agent with no
UID in any label, the forwarding queue computed at scrape, and /readyz naming what failed."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relaypacs_hub.db.models import ForwardJob, Study, utcnow
from relaypacs_hub.main import create_app
from tests.hub.authfix import ADMIN_TOKEN, auth_settings, bearer, hub_client
from tests.hub.test_devices import _enroll

ADMIN = bearer(ADMIN_TOKEN)
METRICS_TOKEN = "metrics-" + "m" * 40


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def beat(**over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "ignored-for-devices",
        "version": "0.1.0",
        "backlog_studies": 3,
        "backlog_bytes": 52_428_800,
        "oldest_waiting_seconds": 4200.0,
        "disk_free_bytes": 512 * 1024**2,
        "disk_reserve_bytes": 1024**3,
        "quarantine": {"not_dicom": 2, "truncated": 1},
        "last_hub_contact_at": datetime.now(UTC).isoformat(),
    }
    body.update(over)
    return body


@pytest.mark.parametrize(
    "field",
    [
        {"backlog_studies": 2**63},
        {"backlog_bytes": 2**64},
        {"disk_free_bytes": 2**63},
        {"quarantine": {"not_dicom": 2**40}},
    ],
)
async def test_a_heartbeat_with_numbers_too_big_to_store_is_a_422(
    tmp_path: Path, field: dict[str, object]
) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        cred = await _enroll(client, "clinic-north", name="north-ct-room")
        r = await client.post(
            "/api/v1/devices/heartbeat",
            json=beat(**field),
            headers={"Authorization": cred["Authorization"]},
        )
        assert r.status_code == 422, r.text
        assert next(iter(field)) in r.text


async def test_heartbeats_are_exported_per_agent(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        cred = await _enroll(client, "clinic-north", name="north-ct-room")
        r = await client.post(
            "/api/v1/devices/heartbeat",
            json=beat(),
            headers={"Authorization": cred["Authorization"]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["agent"] == "north-ct-room"
        assert r.json()["facility"] == "clinic-north"
        # A second report replaces the first: the latest is what counts.
        r = await client.post(
            "/api/v1/devices/heartbeat",
            json=beat(backlog_studies=5),
            headers={"Authorization": cred["Authorization"]},
        )
        assert r.status_code == 200
        text = (await client.get("/metrics")).text
    who = {"agent": "north-ct-room", "facility": "clinic-north"}
    assert value(text, "relaypacs_agent_backlog_studies", **who) == 5
    assert value(text, "relaypacs_agent_backlog_bytes", **who) == 52_428_800
    assert value(text, "relaypacs_agent_oldest_waiting_seconds", **who) == 4200
    assert value(text, "relaypacs_agent_disk_free_bytes", **who) == 512 * 1024**2
    assert value(text, "relaypacs_agent_disk_reserve_bytes", **who) == 1024**3
    assert value(text, "relaypacs_agent_quarantined_files", reason="not_dicom", **who) == 2
    assert value(text, "relaypacs_agent_info", version="0.1.0", **who) == 1
    seen = value(text, "relaypacs_agent_last_heartbeat_timestamp_seconds", **who)
    assert seen is not None and abs(seen - time.time()) < 60
    # No device id, no UID in any label value.
    assert cred["device_id"] not in text


async def test_a_heartbeat_with_free_text_as_a_reason_is_refused(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        cred = await _enroll(client, "clinic-north")
        r = await client.post(
            "/api/v1/devices/heartbeat",
            json=beat(quarantine={"DOE^JANE 1.2.840.99": 1}),
            headers={"Authorization": cred["Authorization"]},
        )
        assert r.status_code == 422
        assert "not a reason code" in r.text
        r = await client.post("/api/v1/devices/heartbeat", json=beat())
        assert r.status_code == 401  # no credential


async def test_queue_depth_and_oldest_due_job_are_computed_at_scrape(tmp_path: Path) -> None:
    settings = auth_settings(tmp_path)
    async with hub_client(settings) as (app, client):
        now = utcnow()
        async with app.state.hub.sessionmaker() as session, session.begin():
            for i, state in enumerate(["pending", "pending", "dead", "done"]):
                uid = f"1.2.826.0.1.3680043.9.{i}"
                session.add(Study(study_instance_uid=uid, state="committed"))
                await session.flush()
                session.add(
                    ForwardJob(
                        study_instance_uid=uid,
                        destination="pacs-main",
                        state=state,
                        created_at=now - timedelta(minutes=10 * (i + 1)),
                        next_attempt_at=now - timedelta(seconds=1),
                    )
                )
        text = (await client.get("/metrics")).text
    assert value(text, "relaypacs_forward_jobs", destination="pacs-main", state="pending") == 2
    assert value(text, "relaypacs_forward_jobs", destination="pacs-main", state="dead") == 1
    oldest = value(text, "relaypacs_queue_oldest_pending_age_seconds", destination="pacs-main")
    assert oldest is not None and 1190 <= oldest <= 1300  # the older pending job: 20 minutes
    assert value(text, "relaypacs_metrics_state_ok") == 1
    assert "1.2.826.0.1.3680043.9" not in text


async def test_metrics_answer_the_loopback_or_the_token_only(tmp_path: Path) -> None:
    for token in (None, METRICS_TOKEN):
        app = create_app(auth_settings(tmp_path / str(bool(token)), metrics_token=token))
        async with app.router.lifespan_context(app):
            remote = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
            async with httpx.AsyncClient(transport=remote, base_url="http://hub") as client:
                r = await client.get("/metrics")
                if token is None:
                    assert r.status_code == 403
                    assert "RELAYPACS_HUB_METRICS_TOKEN" in r.json()["detail"]
                    continue
                assert r.status_code == 401
                assert (await client.get("/metrics", headers=ADMIN)).status_code == 401
                r = await client.get("/metrics", headers=bearer(METRICS_TOKEN))
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/plain")
                assert "relaypacs_forward_jobs" in r.text


async def test_http_answers_are_counted_by_route_template(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        uid = "1.2.826.0.1.3680043.9.77"
        before = value(
            (await client.get("/metrics")).text,
            "relaypacs_http_requests_total",
            route="/api/v1/studies/{study_uid}",
            method="GET",
            status="4xx",
        )
        await client.get(f"/api/v1/studies/{uid}", headers=ADMIN)
        text = (await client.get("/metrics")).text
    after = value(
        text,
        "relaypacs_http_requests_total",
        route="/api/v1/studies/{study_uid}",
        method="GET",
        status="4xx",
    )
    assert after == (before or 0) + 1
    assert uid not in text


@pytest.mark.integration
async def test_readyz_names_what_failed(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {
            "status": "ready",
            "checks": {"database": "ok", "object_store": "ok"},
        }
    # Redis configured but not answering: not ready, and it says which.
    settings = auth_settings(tmp_path / "r", redis_url="redis://127.0.0.1:1/0")
    async with hub_client(settings) as (_app, client):
        r = await client.get("/readyz")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert checks["database"] == "ok"
        assert checks["redis"].startswith("failed:")
        text = (await client.get("/metrics")).text
        errors = value(text, "relaypacs_dependency_errors_total", dependency="redis")
        assert errors is not None and errors >= 1
