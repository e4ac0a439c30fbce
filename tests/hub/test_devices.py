"""Agent enrollment at the hub: one-time codes, device credentials, renewal, revocation, and the
facility a device may send and read for."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import select, update

from relaypacs_dev.generate import generate_study
from relaypacs_hub.config import HubSettings
from relaypacs_hub.db.models import AuditLogEntry, Device, EnrollmentCode, utcnow
from relaypacs_shared.wire import format_content_digest
from tests.hub.authfix import (
    ADMIN_TOKEN,
    AGENT_TOKEN,
    PASSWORD,
    add_user,
    auth_settings,
    bearer,
    hub_client,
)

ADMIN = bearer(ADMIN_TOKEN)


async def _code(client: httpx.AsyncClient, facility: str, ttl: float = 10) -> str:
    r = await client.post(
        "/api/v1/devices/enrollment-codes",
        json={"facility": facility, "ttl_minutes": ttl},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["code"])


async def _enroll(client: httpx.AsyncClient, facility: str, name: str = "agent") -> dict[str, str]:
    r = await client.post(
        "/api/v1/devices/enroll", json={"code": await _code(client, facility), "name": name}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["facility"] == facility
    return {"Authorization": f"Bearer rpd_{body['device_id']}.{body['secret']}", **body}


def _auth(cred: dict[str, str]) -> dict[str, str]:
    return {"Authorization": cred["Authorization"]}


async def _put(client: httpx.AsyncClient, path: Path, headers: dict[str, str]) -> httpx.Response:
    data = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return await client.put(
        f"/api/v1/studies/{ds.StudyInstanceUID}/instances/{ds.SOPInstanceUID}",
        content=data,
        headers={
            **headers,
            "Content-Digest": format_content_digest(hashlib.sha256(data).hexdigest()),
        },
    )


def _commit_body(files: list[Path], facility: str | None = None) -> dict[str, Any]:
    manifest = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        manifest.append(
            {
                "sop_instance_uid": ds.SOPInstanceUID,
                "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
            }
        )
    return {"instances": manifest, "facility": facility}


@pytest.fixture
def settings(tmp_path: Path) -> HubSettings:
    return auth_settings(tmp_path)


async def test_enroll_upload_commit_renew_revoke(settings: HubSettings, tmp_path: Path) -> None:
    st = generate_study(tmp_path / "src", instances=2, seed=21, rows=64, columns=64)
    async with hub_client(settings) as (app, client):
        code = await _code(client, "fac-a")
        r = await client.post("/api/v1/devices/enroll", json={"code": code, "name": "ct-room"})
        assert r.status_code == 201, r.text
        body = r.json()
        cred = {"Authorization": f"Bearer rpd_{body['device_id']}.{body['secret']}"}

        # The code is used up.
        again = await client.post("/api/v1/devices/enroll", json={"code": code, "name": "x"})
        assert again.status_code == 400
        assert again.json()["code"] == "code_used"
        unknown = await client.post("/api/v1/devices/enroll", json={"code": "nope", "name": "x"})
        assert unknown.status_code == 400
        assert unknown.json()["code"] == "code_unknown"

        # The device uploads and commits; its facility is the credential's.
        for f in st.files:
            r = await _put(client, f, cred)
            assert r.status_code == 201, r.text
        r = await client.post(
            f"/api/v1/studies/{st.study_instance_uid}/commit",
            json=_commit_body(st.files),
            headers=cred,
        )
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "committed"
        r = await client.get(f"/api/v1/studies/{st.study_instance_uid}", headers=cred)
        assert r.status_code == 200

        # Renewal: the new secret works, the old one no longer does.
        r = await client.post("/api/v1/devices/renew", headers=cred)
        assert r.status_code == 200, r.text
        new = {"Authorization": f"Bearer rpd_{body['device_id']}.{r.json()['secret']}"}
        old = await client.get(f"/api/v1/studies/{st.study_instance_uid}", headers=cred)
        assert old.status_code == 401
        assert (
            await client.get(f"/api/v1/studies/{st.study_instance_uid}", headers=new)
        ).status_code == 200
        # The legacy agent token cannot renew: there is no device behind it.
        r = await client.post("/api/v1/devices/renew", headers=bearer(AGENT_TOKEN))
        assert r.status_code == 403

        # Admins list and revoke; a revoked device is refused with 401.
        listed = (await client.get("/api/v1/devices", headers=ADMIN)).json()
        assert [d["id"] for d in listed] == [body["device_id"]]
        assert listed[0]["last_seen_at"] is not None
        r = await client.post(f"/api/v1/devices/{body['device_id']}/revoke", headers=ADMIN)
        assert r.status_code == 200
        assert r.json()["revoked_at"] is not None
        r = await client.get(f"/api/v1/studies/{st.study_instance_uid}", headers=new)
        assert r.status_code == 401
        r = await client.post("/api/v1/devices/renew", headers=new)
        assert r.status_code == 401
        # A forged secret for a known device is refused too.
        forged = {"Authorization": f"Bearer rpd_{body['device_id']}.{'A' * 43}"}
        assert (await client.post("/api/v1/devices/renew", headers=forged)).status_code == 401

        async with app.state.hub.sessionmaker() as session:
            actions = list(await session.scalars(select(AuditLogEntry.action)))
            stored = await session.get(Device, body["device_id"])
        assert {"device.code_issued", "device.enrolled", "device.renewed", "device.revoked"} <= set(
            actions
        )
        assert stored is not None and body["secret"] not in stored.secret_hash


async def test_expired_code_is_refused(settings: HubSettings) -> None:
    async with hub_client(settings) as (app, client):
        code = await _code(client, "fac-a")
        async with app.state.hub.sessionmaker() as session, session.begin():
            await session.execute(
                update(EnrollmentCode).values(expires_at=utcnow() - timedelta(seconds=1))
            )
        r = await client.post("/api/v1/devices/enroll", json={"code": code, "name": "late"})
        assert r.status_code == 400
        assert r.json()["code"] == "code_expired"
        assert "expired" in r.json()["detail"]


async def test_only_admins_issue_codes(settings: HubSettings) -> None:
    async with hub_client(settings) as (_app, client):
        body = {"facility": "fac-a", "ttl_minutes": 5}
        r = await client.post("/api/v1/devices/enrollment-codes", json=body)
        assert r.status_code == 401
        r = await client.post(
            "/api/v1/devices/enrollment-codes", json=body, headers=bearer(AGENT_TOKEN)
        )
        assert r.status_code == 403


async def test_a_device_sends_and_reads_only_for_its_facility(
    settings: HubSettings, tmp_path: Path
) -> None:
    st_b = generate_study(tmp_path / "b", instances=1, seed=22, rows=64, columns=64)
    st_a = generate_study(tmp_path / "a", instances=1, seed=23, rows=64, columns=64)
    async with hub_client(settings) as (_app, client):
        dev_a = _auth(await _enroll(client, "fac-a", "a"))
        dev_b = _auth(await _enroll(client, "fac-b", "b"))
        # Facility B's device sends and commits its study.
        assert (await _put(client, st_b.files[0], dev_b)).status_code == 201
        uid_b = st_b.study_instance_uid
        r = await client.post(
            f"/api/v1/studies/{uid_b}/commit", json=_commit_body(st_b.files), headers=dev_b
        )
        assert r.status_code == 200, r.text

        # Facility A's device may not read it; committing, declaring or adding to it is held
        # for an admin (see test_a_second_facility_s_study_is_held_for_an_admin).
        r = await client.get(f"/api/v1/studies/{uid_b}", headers=dev_a)
        assert r.status_code == 403
        r = await client.post(
            f"/api/v1/studies/{uid_b}/commit", json=_commit_body(st_b.files), headers=dev_a
        )
        assert r.status_code == 409 and r.json()["code"] == "study_held"
        ds = pydicom.dcmread(st_b.files[0], stop_before_pixels=True)
        manifest = {
            "instances": [
                {
                    "sop_instance_uid": ds.SOPInstanceUID,
                    "series_instance_uid": ds.SeriesInstanceUID,
                    "sha256": hashlib.sha256(st_b.files[0].read_bytes()).hexdigest(),
                    "size": st_b.files[0].stat().st_size,
                }
            ]
        }
        r = await client.post(f"/api/v1/studies/{uid_b}/manifest", json=manifest, headers=dev_a)
        assert r.status_code == 409 and r.json()["code"] == "study_held"
        assert (await _put(client, st_b.files[0], dev_a)).status_code == 409

        # A device may not declare another facility for its own study.
        assert (await _put(client, st_a.files[0], dev_a)).status_code == 201
        r = await client.post(
            f"/api/v1/studies/{st_a.study_instance_uid}/commit",
            json=_commit_body(st_a.files, facility="fac-b"),
            headers=dev_a,
        )
        assert r.status_code == 403
        r = await client.post(
            f"/api/v1/studies/{st_a.study_instance_uid}/commit",
            json=_commit_body(st_a.files, facility="fac-a"),
            headers=dev_a,
        )
        assert r.status_code == 200, r.text

        # The legacy agent token still reads every facility.
        r = await client.get(f"/api/v1/studies/{uid_b}", headers=bearer(AGENT_TOKEN))
        assert r.status_code == 200

        # People too read only their facilities' studies (a radiologist of clinic A once read
        # clinic B's study state); an admin reads every one.
        await add_user(_app, "rad-a", "radiologist", ["fac-a"])
        await add_user(_app, "rad-b", "radiologist", ["fac-b"])
        await add_user(_app, "boss", "admin", ["fac-a"])
        for user, status_code in (("rad-a", 403), ("rad-b", 200), ("boss", 200)):
            login = await client.post(
                "/api/v1/auth/login", json={"username": user, "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            token = bearer(login.json()["access_token"])
            r = await client.get(f"/api/v1/studies/{uid_b}", headers=token)
            assert r.status_code == status_code, (user, r.text)
            if status_code == 403:
                assert r.json()["code"] == "forbidden"
            else:
                assert r.json()["study_instance_uid"] == uid_b


async def test_agent_token_can_be_switched_off(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path, allow_agent_token=False)) as (_app, client):
        dev = _auth(await _enroll(client, "fac-a"))
        uid = "1.2.826.0.1.3680043.9.77"
        assert (await client.get(f"/api/v1/studies/{uid}", headers=dev)).status_code == 404
        r = await client.get(f"/api/v1/studies/{uid}", headers=bearer(AGENT_TOKEN))
        assert r.status_code == 401


def _manifest(path: Path) -> dict[str, Any]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {
        "instances": [
            {
                "sop_instance_uid": ds.SOPInstanceUID,
                "series_instance_uid": ds.SeriesInstanceUID,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "size": path.stat().st_size,
            }
        ]
    }


async def test_a_second_facility_s_study_is_held_for_an_admin(
    settings: HubSettings, tmp_path: Path
) -> None:
    """A patient transferred with their images: clinic B sends a study clinic A sent first. It
    is neither merged silently nor refused forever: it is held, the admin sees it, accepts it
    for B (B then sends it and reads its state) or refuses it with words B's agent shows."""
    study = generate_study(tmp_path / "s", instances=1, seed=31, rows=64, columns=64)
    other = generate_study(tmp_path / "o", instances=1, seed=32, rows=64, columns=64)
    uid = study.study_instance_uid
    admin = bearer(ADMIN_TOKEN)
    async with hub_client(settings) as (_app, client):
        dev_a = _auth(await _enroll(client, "fac-a", "a"))
        dev_b = _auth(await _enroll(client, "fac-b", "b"))
        assert (await _put(client, study.files[0], dev_a)).status_code == 201
        for _ in range(2):
            r = await client.post(
                f"/api/v1/studies/{uid}/manifest", json=_manifest(study.files[0]), headers=dev_b
            )
            assert r.status_code == 409
            assert r.json()["code"] == "study_held"
            assert "held until an admin of the hub accepts it" in r.json()["detail"]
        claims = (await client.get("/api/v1/study-claims", headers=admin)).json()
        assert [
            (c["study_instance_uid"], c["facility"], c["owner"], c["state"], c["attempts"])
            for c in claims
        ] == [(uid, "fac-b", "fac-a", "held", 2)]
        assert claims[0]["owner_instances"] == 1
        assert (await client.get("/api/v1/study-claims", headers=dev_b)).status_code in (401, 403)

        r = await client.post(
            f"/api/v1/study-claims/{uid}/fac-b", json={"decision": "accept"}, headers=admin
        )
        assert r.status_code == 200 and r.json()["state"] == "accepted"
        r = await client.post(
            f"/api/v1/studies/{uid}/manifest", json=_manifest(study.files[0]), headers=dev_b
        )
        assert r.status_code == 200, r.text
        assert r.json()["missing"] == []  # the hub holds these bytes already
        assert (await client.get(f"/api/v1/studies/{uid}", headers=dev_b)).status_code == 200

        # Another study B sends second is refused: the agent is told why, in the admin's words.
        assert (await _put(client, other.files[0], dev_a)).status_code == 201
        ouid = other.study_instance_uid
        assert (await _put(client, other.files[0], dev_b)).status_code == 409
        r = await client.post(
            f"/api/v1/study-claims/{ouid}/fac-b",
            json={"decision": "refuse", "reason": "a UID clash: re-export it from the modality"},
            headers=admin,
        )
        assert r.json()["state"] == "refused"
        r = await client.post(
            f"/api/v1/studies/{ouid}/manifest", json=_manifest(other.files[0]), headers=dev_b
        )
        assert r.status_code == 409 and r.json()["code"] == "study_refused"
        assert "re-export it from the modality" in r.json()["detail"]
        assert (await client.get(f"/api/v1/studies/{ouid}", headers=dev_b)).status_code == 403


async def test_a_uid_announced_and_never_sent_does_not_block_another_facility(
    settings: HubSettings, tmp_path: Path
) -> None:
    """A manifest alone (a device squatting a UID, or an upload abandoned) holds the study for
    its facility for a day; then the facility that really sends it takes it."""
    from relaypacs_hub.db.models import StudyFacility

    study = generate_study(tmp_path / "s", instances=1, seed=33, rows=64, columns=64)
    uid = study.study_instance_uid
    async with hub_client(settings) as (app, client):
        dev_a = _auth(await _enroll(client, "fac-a", "a"))
        dev_b = _auth(await _enroll(client, "fac-b", "b"))
        body = _manifest(study.files[0])
        assert (
            await client.post(f"/api/v1/studies/{uid}/manifest", json=body, headers=dev_a)
        ).status_code == 200
        r = await client.post(f"/api/v1/studies/{uid}/manifest", json=body, headers=dev_b)
        assert r.status_code == 409  # within the day: held
        async with app.state.hub.sessionmaker() as session, session.begin():
            await session.execute(
                update(StudyFacility)
                .where(StudyFacility.study_instance_uid == uid)
                .values(recorded_at=utcnow() - timedelta(hours=25))
            )
        r = await client.post(f"/api/v1/studies/{uid}/manifest", json=body, headers=dev_b)
        assert r.status_code == 200, r.text
        assert (await _put(client, study.files[0], dev_b)).status_code == 201
        r = await client.post(f"/api/v1/studies/{uid}/manifest", json=body, headers=dev_a)
        assert r.status_code == 409  # now the other way round
