"""LAN login at the agent: checked against verifiers cached from the hub, with the WAN up or
down; lockout per device, TOTP (once across agent and hub), facility and account changes at
the hub all hold."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyotp

from tests.agent.webfix import PASSWORD, FakeHub, user, web_app


async def test_login_online_then_offline_with_the_hub_down(tmp_path: Path) -> None:
    hub = FakeHub()
    async with web_app(tmp_path, hub=hub) as web:
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "clinician1", "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["role"] == "clinician" and body["offline"] is False
        assert body["token"].startswith("rpl_")
        me = await web.client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['token']}"}
        )
        assert me.status_code == 200 and me.json()["username"] == "clinician1"

        hub.down = True
        web.auth.sync()  # the next refresh fails: the copy stays
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "radiographer1", "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        assert r.json()["offline"] is True


async def test_no_plaintext_password_or_token_is_kept(tmp_path: Path) -> None:
    async with web_app(tmp_path) as web:
        headers = await web.login("clinician1")
        web.store.conn.execute("PRAGMA wal_checkpoint(FULL)")
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("agent.db*"))
        assert PASSWORD.encode() not in raw
        assert headers["Authorization"].split()[1].encode() not in raw
        assert b"$argon2id$" in raw  # the verifier is what is kept


async def test_before_any_contact_with_the_hub_nobody_can_log_in(tmp_path: Path) -> None:
    hub = FakeHub(down=True)
    async with web_app(tmp_path, hub=hub, sync_first=False) as web:
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "clinician1", "password": PASSWORD}
        )
        assert r.status_code == 503
        assert r.json()["code"] == "no_verifiers"
        assert "has not reached the hub" in r.json()["detail"]


async def test_wrong_password_then_lockout(tmp_path: Path) -> None:
    async with web_app(tmp_path) as web:
        for _ in range(5):
            r = await web.client.post(
                "/api/v1/auth/login", json={"username": "clinician1", "password": "nope"}
            )
            assert r.status_code == 401 and r.json()["code"] == "invalid_credentials"
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "clinician1", "password": PASSWORD}
        )
        assert r.status_code == 423
        assert r.json()["code"] == "locked"
        assert "from this device" in r.json()["detail"]
        # Every API answer, refusals included: not sniffed, not framed, not cached.
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in r.headers  # plain HTTP in this test
        assert int(r.headers["retry-after"]) > 0
        # The audit chain records each failure and the refusal, never the password.
        rows = web.store.query("SELECT action, outcome, details FROM audit_log")
        failures = [
            x for x in rows if x["action"] == "lan.login" and x["outcome"] == "minor_failure"
        ]
        assert len(failures) == 6
        assert all(PASSWORD not in x["details"] and "nope" not in x["details"] for x in rows)


async def test_a_password_typed_as_the_username_is_kept_nowhere(tmp_path: Path) -> None:
    """People type their password into the username field. A name nobody has is audited and
    counted towards the lockout only as a hash, at the agent as at the hub."""
    secret_as_name = "Winter-Clinic-2026!"
    async with web_app(tmp_path) as web:
        for _ in range(5):
            r = await web.client.post(
                "/api/v1/auth/login", json={"username": secret_as_name, "password": "x"}
            )
            assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": secret_as_name, "password": "x"}
        )
        assert r.status_code == 423 and r.json()["code"] == "locked"  # still counted
        rows = web.store.query(
            "SELECT actor, target, details FROM audit_log WHERE action = 'lan.login'"
        )
        assert len(rows) == 6
        assert {x["actor"] for x in rows} == {x["target"] for x in rows}
        (actor,) = {x["actor"] for x in rows}
        assert actor.startswith("unknown:") and secret_as_name not in actor
        failures = web.store.query("SELECT username FROM lan_login_failures")
        assert [x["username"] for x in failures] == [actor]
        web.store.conn.execute("PRAGMA wal_checkpoint(FULL)")
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("agent.db*"))
        assert secret_as_name.encode() not in raw
        # A real user's failures still name the user (an admin must see whose account it is).
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "clinician1", "password": "nope"}
        )
        assert r.status_code == 401
        last = web.store.query(
            "SELECT actor FROM audit_log WHERE action = 'lan.login' ORDER BY seq DESC LIMIT 1"
        )
        assert last[0]["actor"] == "clinician1"


async def test_a_stranger_on_the_lan_locks_only_their_own_device_out(tmp_path: Path) -> None:
    """Wrong passwords from one phone lock that phone, not the person: the clinician at the
    next workstation signs in; and a name that does not exist locks the same way."""
    async with web_app(tmp_path) as web:
        app = web.client._transport.app  # type: ignore[attr-defined]

        def phone(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 50001))
            return httpx.AsyncClient(transport=transport, base_url="http://agent.test")

        answers: dict[str, list[int]] = {}
        for name, address in (("clinician1", "192.0.2.66"), ("nobody", "192.0.2.67")):
            async with phone(address) as stranger:
                answers[name] = [
                    (
                        await stranger.post(
                            "/api/v1/auth/login", json={"username": name, "password": "nope"}
                        )
                    ).status_code
                    for _ in range(6)
                ]
        assert answers["clinician1"] == answers["nobody"] == [401] * 5 + [423]
        async with phone("192.0.2.77") as colleague:
            r = await colleague.post(
                "/api/v1/auth/login", json={"username": "clinician1", "password": PASSWORD}
            )
            assert r.status_code == 200, r.text


async def test_unknown_user_is_as_wrong_as_a_wrong_password(tmp_path: Path) -> None:
    async with web_app(tmp_path) as web:
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "ghost", "password": PASSWORD}
        )
        assert r.status_code == 401 and r.json()["code"] == "invalid_credentials"


async def test_a_user_added_at_the_hub_can_log_in_at_once(tmp_path: Path) -> None:
    hub = FakeHub()
    async with web_app(tmp_path, hub=hub) as web:
        hub.users.append(user("newcomer", "clinician"))
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "newcomer", "password": PASSWORD}
        )
        assert r.status_code == 200, r.text


async def test_a_user_removed_at_the_hub_loses_the_session_at_next_sync(tmp_path: Path) -> None:
    hub = FakeHub()
    async with web_app(tmp_path, hub=hub) as web:
        headers = await web.login("clinician1")
        assert (await web.client.get("/api/v1/auth/me", headers=headers)).status_code == 200
        hub.users = [u for u in hub.users if u["username"] != "clinician1"]
        assert web.auth.sync()
        assert (await web.client.get("/api/v1/auth/me", headers=headers)).status_code == 401


async def test_a_password_reset_at_the_hub_ends_the_lan_sessions(tmp_path: Path) -> None:
    """LAN sessions once outlived a password reset at the hub (the attack run's finding)."""
    from argon2 import PasswordHasher

    hub = FakeHub()
    async with web_app(tmp_path, hub=hub) as web:
        mine = await web.login("clinician1")
        other = await web.login("radiographer1")
        new_hash = PasswordHasher().hash("a new password after a leak")
        hub.users = [
            {**u, "password_hash": new_hash} if u["username"] == "clinician1" else u
            for u in hub.users
        ]
        assert web.auth.sync()
        assert (await web.client.get("/api/v1/auth/me", headers=mine)).status_code == 401
        # Only that user's sessions end.
        assert (await web.client.get("/api/v1/auth/me", headers=other)).status_code == 200
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "clinician1", "password": PASSWORD}
        )
        assert r.status_code == 401
        r = await web.client.post(
            "/api/v1/auth/login",
            json={"username": "clinician1", "password": "a new password after a leak"},
        )
        assert r.status_code == 200
        ended = web.store.query(
            "SELECT COUNT(*) AS n FROM audit_log WHERE action = 'lan.sessions_ended'"
        )
        assert ended[0]["n"] == 1


async def test_other_facility_refused_unrestricted_allowed(tmp_path: Path) -> None:
    hub = FakeHub(users=[user("south1", "clinician", ["south"]), user("roamer", "admin", [])])
    async with web_app(tmp_path, hub=hub, facility="north") as web:
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "south1", "password": PASSWORD}
        )
        assert r.status_code == 403 and r.json()["code"] == "wrong_facility"
        await web.login("roamer")


async def test_totp_from_the_hub_is_checked_offline_and_a_code_works_once(tmp_path: Path) -> None:
    secret = pyotp.random_base32()
    hub = FakeHub(users=[user("doc", "radiographer", totp_secret=secret)])
    async with web_app(tmp_path, hub=hub) as web:
        hub.down = True
        web.auth.sync()
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "doc", "password": PASSWORD}
        )
        assert r.status_code == 401 and r.json()["code"] == "totp_required"
        code = pyotp.TOTP(secret).now()
        r = await web.client.post(
            "/api/v1/auth/login",
            json={
                "username": "doc",
                "password": PASSWORD,
                "totp_code": "000000" if code != "000000" else "111111",
            },
        )
        assert r.status_code == 401 and r.json()["code"] == "invalid_credentials"
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "doc", "password": PASSWORD, "totp_code": code}
        )
        assert r.status_code == 200, r.text
        assert r.json()["offline"] is True
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "doc", "password": PASSWORD, "totp_code": code}
        )
        assert r.status_code == 401  # replayed code


async def test_role_needing_2fa_without_enrollment_is_sent_to_the_hub(tmp_path: Path) -> None:
    hub = FakeHub(users=[user("boss", "admin", totp_required=True)])
    async with web_app(tmp_path, hub=hub) as web:
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "boss", "password": PASSWORD}
        )
        assert r.status_code == 403
        assert r.json()["code"] == "totp_enrollment_required"


async def test_login_rate_limit_per_address(tmp_path: Path) -> None:
    async with web_app(tmp_path) as web:
        codes = []
        for i in range(12):
            r = await web.client.post(
                "/api/v1/auth/login", json={"username": f"x{i}", "password": "y"}
            )
            codes.append(r.status_code)
        assert codes[:10] == [401] * 10
        assert codes[10:] == [429, 429]
        assert int(r.headers["retry-after"]) >= 1


async def test_malformed_login_bodies_are_422(tmp_path: Path) -> None:
    async with web_app(tmp_path) as web:
        for body in (b"not json", b"[]", b'{"username": 1, "password": "x"}', b"{}"):
            r = await web.client.post(
                "/api/v1/auth/login", content=body, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 422, body


async def test_with_the_hub_known_down_an_unknown_name_does_not_wait_for_it(
    tmp_path: Path,
) -> None:
    hub = FakeHub()
    async with web_app(tmp_path, hub=hub) as web:
        hub.down = True
        assert not web.auth.sync()  # the keeper thread's probe would find the same
        calls = hub.calls
        r = await web.client.post(
            "/api/v1/auth/login", json={"username": "typo", "password": PASSWORD}
        )
        assert r.status_code == 401
        assert hub.calls == calls  # answered from the cached copy, no call to a dead hub


async def test_a_code_used_at_the_agent_is_claimed_at_the_hub(tmp_path: Path) -> None:
    """A TOTP code works once across the agent and the hub: the agent claims its time step at
    the hub (which then refuses the same code), and refuses a code the hub saw used."""
    secret = pyotp.random_base32()
    hub = FakeHub(users=[user("doc", "radiographer", totp_secret=secret)])
    async with web_app(tmp_path, hub=hub) as web:
        totp = pyotp.TOTP(secret)
        now = int(time.time())
        body = {"username": "doc", "password": PASSWORD}
        r = await web.client.post("/api/v1/auth/login", json={**body, "totp_code": totp.at(now)})
        assert r.status_code == 200, r.text
        step = totp.timecode(datetime.fromtimestamp(now, UTC))
        assert hub.claims == [("doc", step, True)]
        # The next code was used at the hub (a sign-in at the dashboard) before it is tried here.
        hub.users[0]["totp_last_step"] = step + 1
        r = await web.client.post(
            "/api/v1/auth/login", json={**body, "totp_code": totp.at(now + 30)}
        )
        assert r.status_code == 401
        assert hub.claims[-1] == ("doc", step + 1, False)


async def test_with_the_hub_down_a_used_step_is_reported_at_the_next_sync(tmp_path: Path) -> None:
    secret = pyotp.random_base32()
    hub = FakeHub(users=[user("doc", "radiographer", totp_secret=secret)])
    async with web_app(tmp_path, hub=hub) as web:
        hub.down = True
        web.auth.sync()  # the agent learns the hub is down
        totp = pyotp.TOTP(secret)
        now = int(time.time())
        body = {"username": "doc", "password": PASSWORD, "totp_code": totp.at(now)}
        r = await web.client.post("/api/v1/auth/login", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["offline"] is True
        assert hub.claims == []
        hub.down = False
        assert web.auth.sync()
        step = totp.timecode(datetime.fromtimestamp(now, UTC))
        assert hub.claims == [("doc", step, True)]
        assert hub.users[0]["totp_last_step"] == step
        # Reported once: the next sync has nothing more to tell.
        web.auth.sync()
        assert len(hub.claims) == 1
