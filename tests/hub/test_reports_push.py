"""Web Push from the hub to a push service the test runs: a report for a STAT study is pushed to
every subscription of the study's facility, with a VAPID JWT that verifies against the hub's
public key, an aes128gcm payload that decrypts to an opaque id (no patient data) and
``Urgency: high``; other facilities get nothing; a subscription the push service says is gone is
dropped."""

from __future__ import annotations

import json
import time
from pathlib import Path

from relaypacs_hub.db.models import PushSubscription
from tests.hub.authfix import ADMIN_TOKEN, auth_settings, bearer, hub_client
from tests.hub.test_reports_api import _device, _send_study
from tests.support.pushservice import PushService


async def test_report_pushed_to_the_facility_subscriptions(tmp_path: Path) -> None:
    service = PushService()
    try:
        async with hub_client(auth_settings(tmp_path)) as (app, client):
            fac_a = await _device(app, "fac-a")
            fac_b = await _device(app, "fac-b")
            key = (await client.get("/api/v1/push/key", headers=fac_a)).json()["public_key"]
            phone, gone, other = (service.subscription(n) for n in ("phone", "gone", "other"))
            service.gone.add("/push/gone")
            for sub, device in ((phone, fac_a), (gone, fac_a), (other, fac_b)):
                r = await client.post(
                    "/api/v1/push/subscriptions", json={**sub, "username": "nurse"}, headers=device
                )
                assert r.status_code == 201, r.text
            r = await client.post(
                "/api/v1/push/subscriptions",
                json={**phone, "endpoint": "http://push.example.org/x", "username": "nurse"},
                headers=fac_a,
            )
            assert r.status_code == 422 and "https://" in r.json()["detail"]

            study_uid = await _send_study(client, fac_a, tmp_path / "s", level="stat")
            r = await client.post(
                f"/api/v1/studies/{study_uid}/reports",
                json={"text": "Tension pneumothorax, right.", "status": "final"},
                headers=bearer(ADMIN_TOKEN),
            )
            assert r.status_code == 201
            report_id = r.json()["report"]["id"]
            await app.state.hub.push.drain()  # the hub pushes in the background
            pushes = service.wait(1)
            assert service.errors == []
            assert [p.path for p in pushes] == ["/push/phone"]  # not fac-b's, not the gone one
            push = pushes[0]
            assert push.vapid_key == key
            assert push.claims["sub"].startswith("mailto:") and push.claims["exp"] > time.time()
            assert push.headers["urgency"] == "high"
            assert json.loads(push.payload) == {
                "kind": "report", "id": report_id, "status": "final"
            }  # fmt: skip
            assert study_uid.encode() not in push.payload and b"pneumothorax" not in push.payload
            async with app.state.hub.sessionmaker() as session:
                left = {
                    s.endpoint
                    for s in (await session.execute(
                        __import__("sqlalchemy").select(PushSubscription)
                    )).scalars()
                }  # fmt: skip
            assert left == {phone["endpoint"], other["endpoint"]}
    finally:
        service.close()
