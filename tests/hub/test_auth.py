"""People at the hub: login, tokens that must be refused, refresh rotation, TOTP, lockout, users."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pyotp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relaypacs_hub.audit import read_log
from relaypacs_hub.config import HubSettings
from relaypacs_hub.main import create_app
from tests.hub.authfix import ADMIN_TOKEN, PASSWORD, add_user, auth_settings, bearer, hub_client

Hub = tuple[Any, httpx.AsyncClient]


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with hub_client(auth_settings(tmp_path, require_totp_roles="radiologist")) as h:
        yield h


async def login(client: httpx.AsyncClient, username: str, **extra: Any) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/login", json={"username": username, "password": PASSWORD, **extra}
    )


async def tokens(client: httpx.AsyncClient, username: str, **extra: Any) -> dict[str, Any]:
    r = await login(client, username, **extra)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(app: Any, **overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "iss": "relaypacs-hub",
        "aud": "relaypacs",
        "sub": "carol",
        "role": "admin",
        "fac": ["fac-a"],
        "iat": now,
        "exp": now + 600,
        "jti": "x",
    }
    claims.update(overrides)
    return claims


async def test_login_and_me(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "alice", "clinician", ["fac-a", "fac-b"])
    body = await tokens(client, "alice")
    assert body["refresh_token"] and body["expires_in"] == 600
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"iss", "aud", "sub", "role", "fac", "exp", "iat", "jti"} <= set(claims)
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "EdDSA"
    r = await client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
    assert r.status_code == 200
    assert r.json() == {
        "username": "alice",
        "role": "clinician",
        "facilities": ["fac-a", "fac-b"],
        "scope": "full",
    }


async def test_wrong_password_and_unknown_user_look_the_same(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "alice", "clinician")
    wrong = await client.post("/api/v1/auth/login", json={"username": "alice", "password": "nope"})
    unknown = await login(client, "mallory")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


@contextlib.asynccontextmanager
async def client_at(app: Any, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client calling from ``address`` (the hub counts failed logins per address)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


async def _fail(client: httpx.AsyncClient, username: str) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"username": username, "password": "x"})


async def test_failures_lock_one_address_not_the_account(hub: Hub) -> None:
    """A stranger's wrong passwords lock the stranger's address only (OWASP ASVS 2.2.1)."""
    app, _ = hub
    await add_user(app, "alice", "clinician")
    async with client_at(app, "203.0.113.9") as stranger, client_at(app, "10.1.2.3") as alice:
        for _ in range(3):  # login_max_failures=3
            assert (await _fail(stranger, "alice")).status_code == 401
        r = await login(stranger, "alice")  # even the right password, from that address
        assert r.status_code == 429
        assert r.json()["code"] == "login_locked"
        assert "from this address" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) > 800
        # Alice, from her own address, is not locked out.
        assert (await login(alice, "alice")).status_code == 200
        # An admin resetting the password lets the locked address try again.
        r = await alice.patch(
            "/api/v1/users/alice", json={"password": PASSWORD}, headers=bearer(ADMIN_TOKEN)
        )
        assert r.status_code == 200
        assert (await login(stranger, "alice")).status_code == 200


async def test_locks_do_not_tell_which_names_exist(hub: Hub) -> None:
    """The same sequence of answers, word for word, for a name that exists and one that does not."""
    app, _ = hub
    await add_user(app, "alice", "clinician")
    seen: dict[str, list[tuple[int, str, str | None]]] = {}
    for name in ("alice", "nobody"):
        async with client_at(app, "198.51.100.7") as client:
            answers = [await _fail(client, name) for _ in range(5)]
        seen[name] = [
            (r.status_code, r.json()["code"], r.headers.get("Retry-After") and "set")
            for r in answers
        ]
    assert seen["alice"] == seen["nobody"]
    assert [s for s, _, _ in seen["alice"]] == [401, 401, 401, 429, 429]


async def test_a_spray_from_many_addresses_keeps_known_addresses_working(tmp_path: Path) -> None:
    settings = auth_settings(tmp_path, login_max_failures=3, login_account_max_failures=6)
    async with hub_client(settings) as (app, _):
        await add_user(app, "alice", "clinician")
        async with client_at(app, "10.1.2.3") as alice:
            assert (await login(alice, "alice")).status_code == 200  # her usual address
        for n in range(6):  # one or two tries from each of many addresses
            async with client_at(app, f"203.0.113.{n}") as bot:
                assert (await _fail(bot, "alice")).status_code == 401
        async with client_at(app, "192.0.2.50") as elsewhere:
            r = await login(elsewhere, "alice")
            assert r.status_code == 429
            assert r.json()["code"] == "login_locked"
            assert "addresses it used before" in r.json()["detail"]
        async with client_at(app, "10.1.2.3") as alice:
            assert (await login(alice, "alice")).status_code == 200
            users = (await alice.get("/api/v1/users", headers=bearer(ADMIN_TOKEN))).json()
            locked = next(u for u in users if u["username"] == "alice")["locked_until"]
            assert locked is not None  # the admin sees it
            r = await alice.patch(
                "/api/v1/users/alice", json={"password": PASSWORD}, headers=bearer(ADMIN_TOKEN)
            )
            assert r.json()["locked_until"] is None
        async with client_at(app, "192.0.2.50") as elsewhere:
            assert (await login(elsewhere, "alice")).status_code == 200


async def test_lockout_expires(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path, login_lockout_seconds=0)) as (app, client):
        await add_user(app, "alice", "clinician")
        for _ in range(3):
            await client.post("/api/v1/auth/login", json={"username": "alice", "password": "x"})
        await tokens(client, "alice")


async def test_bad_access_tokens_are_refused(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "carol", "admin")
    issuer = app.state.hub.auth.issuer
    good = await tokens(client, "carol")
    assert (
        await client.get("/api/v1/users", headers=bearer(good["access_token"]))
    ).status_code == 200

    expired = issuer.issue("carol", "admin", ["fac-a"], now=datetime.now(UTC) - timedelta(hours=1))
    forged = jwt.encode(_claims(app), Ed25519PrivateKey.generate(), algorithm="EdDSA")
    none_head = _b64(b'{"alg":"none","typ":"JWT"}')
    alg_none = f"{none_head}.{_b64(json.dumps(_claims(app)).encode())}."
    # HS256 keyed with the public key (the classic RS/HS confusion): built by hand, since pyjwt
    # rightly refuses to make one.
    head = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(json.dumps(_claims(app)).encode())
    mac = hmac.new(issuer.public_pem.encode(), head.encode(), hashlib.sha256).digest()
    confused = f"{head}.{_b64(mac)}"
    wrong_aud = jwt.encode(_claims(app, aud="someone-else"), issuer._key, algorithm="EdDSA")
    wrong_iss = jwt.encode(_claims(app, iss="evil"), issuer._key, algorithm="EdDSA")
    tampered = good["access_token"][:-4] + (
        "AAAA" if not good["access_token"].endswith("AAAA") else "BBBB"
    )
    for name, token in {
        "expired": expired,
        "forged": forged,
        "none": alg_none,
        "hs256-confusion": confused,
        "wrong-aud": wrong_aud,
        "wrong-iss": wrong_iss,
        "tampered": tampered,
        "garbage": "not-a-jwt",
    }.items():
        r = await client.get("/api/v1/users", headers=bearer(token))
        assert r.status_code == 401, name
        r = await client.get("/api/v1/auth/me", headers=bearer(token))
        assert r.status_code == 401, name


async def test_disabled_user_token_stops_working(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "alice", "clinician")
    t = await tokens(client, "alice")
    r = await client.patch(
        "/api/v1/users/alice", json={"disabled": True}, headers=bearer(ADMIN_TOKEN)
    )
    assert r.status_code == 200
    assert (
        await client.get("/api/v1/auth/me", headers=bearer(t["access_token"]))
    ).status_code == 401
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": t["refresh_token"]})
    assert r.status_code == 401
    assert (await login(client, "alice")).status_code == 401


async def test_refresh_rotates_and_reuse_revokes_the_family(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "alice", "clinician")
    first = await tokens(client, "alice")
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    # The rotated token comes back (a stolen copy): refused, and the new one dies with it.
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 401
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 401
    # Another login is another family, unaffected.
    other = await tokens(client, "alice")
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert r.status_code == 200


async def test_logout_revokes_the_refresh_token(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "alice", "clinician")
    t = await tokens(client, "alice")
    r = await client.post("/api/v1/auth/logout", json={"refresh_token": t["refresh_token"]})
    assert r.status_code == 204
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": t["refresh_token"]})
    assert r.status_code == 401


async def test_access_tokens_end_with_their_session_not_minutes_later(hub: Hub) -> None:
    """Access tokens lived their 10 minutes after a logout, a refresh token caught reused, or a
    password reset (the attack run's finding)."""
    app, client = hub
    await add_user(app, "alice", "clinician")
    await add_user(app, "root", "admin")
    admin = bearer((await tokens(client, "root"))["access_token"])

    async def me(t: dict[str, Any]) -> int:
        r = await client.get("/api/v1/auth/me", headers=bearer(t["access_token"]))
        return r.status_code

    # Logout.
    a, b = await tokens(client, "alice"), await tokens(client, "alice")
    assert await me(a) == 200
    r = await client.post("/api/v1/auth/logout", json={"refresh_token": a["refresh_token"]})
    assert r.status_code == 204
    assert await me(a) == 401
    assert await me(b) == 200  # another device's session goes on

    # A refresh token used twice: the whole family, access tokens included.
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": b["refresh_token"]})
    rotated = r.json()
    assert await me(rotated) == 200
    await client.post("/api/v1/auth/refresh", json={"refresh_token": b["refresh_token"]})
    assert await me(rotated) == 401

    # A password reset by an admin ends every session of the user.
    c = await tokens(client, "alice")
    assert await me(c) == 200
    r = await client.patch(
        "/api/v1/users/alice", json={"password": "a brand new passphrase 42"}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert await me(c) == 401


async def test_usernames_differing_only_by_case_are_one_name(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "root", "admin")
    admin = bearer((await tokens(client, "root"))["access_token"])
    body = {"password": "a long enough passphrase", "role": "clinician", "facilities": ["fac-a"]}
    r = await client.post("/api/v1/users", json={"username": "alice", **body}, headers=admin)
    assert r.status_code == 201, r.text
    for name in ("Alice", "ALICE", "alice"):
        r = await client.post("/api/v1/users", json={"username": name, **body}, headers=admin)
        assert r.status_code == 409, name
        assert r.json()["code"] == "user_exists"
        assert "alice" in r.json()["detail"]


async def test_totp_from_enrollment_to_login_and_a_recovery_code_once(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "alice", "radiographer")
    t = await tokens(client, "alice")
    r = await client.post("/api/v1/auth/totp/enroll", headers=bearer(t["access_token"]))
    assert r.status_code == 200
    uri = r.json()["provisioning_uri"]
    assert uri.startswith("otpauth://totp/") and "issuer=RelayPACS" in uri
    otp = pyotp.parse_uri(uri)
    assert isinstance(otp, pyotp.TOTP)
    r = await client.post(
        "/api/v1/auth/totp/confirm",
        json={"code": "000000" if otp.now() != "000000" else "111111"},
        headers=bearer(t["access_token"]),
    )
    assert r.status_code == 400
    confirmed_with = otp.now()
    r = await client.post(
        "/api/v1/auth/totp/confirm",
        json={"code": confirmed_with},
        headers=bearer(t["access_token"]),
    )
    assert r.status_code == 200
    codes = r.json()["recovery_codes"]
    assert len(codes) == 10

    r = await login(client, "alice")
    assert r.status_code == 401 and r.json()["code"] == "totp_required"
    # The code that confirmed enrollment is used up; the next step's code (one step ahead is
    # accepted for a fast phone clock) works once.
    r = await login(client, "alice", totp_code=confirmed_with)
    assert r.status_code == 401
    next_code = otp.at(int(time.time()) + 30)
    await tokens(client, "alice", totp_code=next_code)
    r = await login(client, "alice", totp_code=next_code)
    assert r.status_code == 401, "a TOTP code must not work twice"
    await tokens(client, "alice", recovery_code=codes[0])
    r = await login(client, "alice", recovery_code=codes[0])
    assert r.status_code == 401
    await tokens(client, "alice", recovery_code=codes[1])


async def test_required_totp_role_cannot_work_before_enrolling(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "rita", "radiologist")  # require_totp_roles=radiologist
    t = await tokens(client, "rita")
    assert t["scope"] == "totp-enroll" and t["refresh_token"] is None
    h = bearer(t["access_token"])
    assert (await client.get("/api/v1/studies/1.2.3", headers=h)).status_code == 403
    r = await client.post("/api/v1/auth/totp/enroll", headers=h)
    otp = pyotp.parse_uri(r.json()["provisioning_uri"])
    r = await client.post("/api/v1/auth/totp/confirm", json={"code": otp.now()}, headers=h)
    assert r.status_code == 200
    r = await login(client, "rita")
    assert r.status_code == 401 and r.json()["code"] == "totp_required"
    full = await tokens(client, "rita", totp_code=otp.at(int(time.time()) + 30))
    assert full["scope"] == "full"
    r = await client.get("/api/v1/studies/1.2.3", headers=bearer(full["access_token"]))
    assert r.status_code == 404


async def test_admin_manages_users_and_others_may_not(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "carol", "admin")
    await add_user(app, "alice", "clinician")
    admin = bearer((await tokens(client, "carol"))["access_token"])
    clinician = bearer((await tokens(client, "alice"))["access_token"])
    new = {
        "username": "bob",
        "password": "another long password",
        "role": "radiographer",
        "facilities": ["fac-b"],
    }
    assert (await client.post("/api/v1/users", json=new, headers=clinician)).status_code == 403
    assert (await client.get("/api/v1/users", headers=clinician)).status_code == 403
    r = await client.post("/api/v1/users", json=new, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "radiographer"
    assert (await client.post("/api/v1/users", json=new, headers=admin)).status_code == 409
    r = await client.post(
        "/api/v1/auth/login", json={"username": "bob", "password": "another long password"}
    )
    assert r.status_code == 200
    r = await client.patch("/api/v1/users/bob", json={"role": "radiologist"}, headers=admin)
    assert r.json()["role"] == "radiologist"
    names = [u["username"] for u in (await client.get("/api/v1/users", headers=admin)).json()]
    assert names == ["alice", "bob", "carol"]
    assert (await client.delete("/api/v1/users/bob", headers=admin)).status_code == 204
    assert (await client.delete("/api/v1/users/bob", headers=admin)).status_code == 404


async def test_logins_are_audited_without_passwords(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "alice", "clinician")
    await tokens(client, "alice")
    await client.post("/api/v1/auth/login", json={"username": "alice", "password": "hunter2-typo"})
    records = [r.record async for r in read_log(app.state.hub.sessionmaker)]
    logins = [(r.actor, r.outcome) for r in records if r.action == "login"]
    assert logins == [("alice", "success"), ("alice", "minor_failure")]
    assert any(r.action == "user_create" for r in records)
    dump = json.dumps(
        [r.__dict__ if hasattr(r, "__dict__") else str(r) for r in records], default=str
    )
    assert PASSWORD not in dump and "hunter2-typo" not in dump


async def test_a_password_typed_as_the_username_is_kept_nowhere(hub: Hub) -> None:
    """An attack run found a password typed into the username field stored in the audit log,
    and 422 answers echoing the submitted password back."""
    app, client = hub
    await add_user(app, "alice", "clinician")
    secret = "Tr0ub4dor&3-typed-in-the-wrong-field"
    r = await client.post("/api/v1/auth/login", json={"username": secret, "password": "x"})
    assert r.status_code == 401
    again = await client.post("/api/v1/auth/login", json={"username": secret, "password": "y"})
    assert again.status_code == 401
    records = [r.record async for r in read_log(app.state.hub.sessionmaker)]
    failures = [r for r in records if r.action == "login" and r.outcome == "minor_failure"]
    assert len(failures) == 2
    # The same unknown name is recognisable as the same, without being readable.
    assert failures[0].actor == failures[1].actor and failures[0].actor.startswith("unknown:")
    dump = json.dumps([str(r) for r in records])
    assert secret not in dump
    # A body that does not fit the model: where and what, never the values sent.
    r = await client.post("/api/v1/auth/login", json={"password": secret})
    assert r.status_code == 422
    assert secret not in r.text
    assert r.json()["code"] == "invalid_request"
    assert "username" in r.json()["message"]
    r = await client.post("/api/v1/auth/login", json={"username": ["a"], "password": secret})
    assert r.status_code == 422 and secret not in r.text


def test_production_refuses_to_start_without_a_signing_key(tmp_path: Path) -> None:
    settings = HubSettings(
        environment="production",
        agent_token="3f9a1c7e5b2d4086a9e1f3c5b7d90e2a4c6b8d0f1e3a5c7b",
        data_dir=tmp_path,
    )  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JWT_PRIVATE_KEY_FILE"):
        create_app(settings)


async def test_development_key_is_generated_private(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)):
        key = tmp_path / "hub" / "jwt-signing-key.pem"
        assert key.stat().st_mode & 0o777 == 0o600


async def test_the_last_enabled_admin_cannot_be_removed(hub: Hub) -> None:
    app, client = hub
    await add_user(app, "carol", "admin")
    admin = bearer((await tokens(client, "carol"))["access_token"])
    for change in ({"disabled": True}, {"role": "radiologist"}):
        r = await client.patch("/api/v1/users/carol", json=change, headers=admin)
        assert r.status_code == 409 and r.json()["code"] == "last_admin", change
    r = await client.delete("/api/v1/users/carol", headers=admin)
    assert r.status_code == 409
    # With a second admin, the first may go; a clinician's changes never needed one.
    await add_user(app, "dave", "admin")
    await add_user(app, "alice", "clinician")
    r = await client.patch("/api/v1/users/alice", json={"disabled": True}, headers=admin)
    assert r.status_code == 200
    r = await client.patch("/api/v1/users/carol", json={"role": "radiologist"}, headers=admin)
    assert r.status_code == 200 and r.json()["role"] == "radiologist"
    dave = bearer((await tokens(client, "dave"))["access_token"])
    assert (await client.delete("/api/v1/users/carol", headers=dave)).status_code == 204
    r = await client.patch("/api/v1/users/dave", json={"disabled": True}, headers=dave)
    assert r.status_code == 409
