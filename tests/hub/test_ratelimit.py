"""Rate limits on login (per username, per client address) and on tus upload creation.

In-process limits through the ASGI app; the Redis backend against a real Redis (127.0.0.1:6379,
or ``RELAYPACS_TEST_REDIS_URL``): two hub instances sharing Redis share the limit, as replicas do.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs_hub.ratelimit import MemoryLimiter, RedisLimiter, Rule
from tests.hub.authfix import AGENT_TOKEN, PASSWORD, add_user, auth_settings, bearer, hub_client

REDIS_URL = os.environ.get("RELAYPACS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TUS = {"Tus-Resumable": "1.0.0", "Upload-Length": "10"}


async def _login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> Any:
    return await client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )


def _assert_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["code"] == "rate_limited"
    assert "retry after" in body["detail"]


async def test_login_limited_per_username(tmp_path: Path) -> None:
    """Attempts per name from addresses the account never signed in from are limited; the
    owner's own address is not (a stranger cannot keep a person out)."""
    settings = auth_settings(tmp_path, login_rate_per_user=3, login_max_failures=100)
    async with hub_client(settings) as (app, client):
        await add_user(app, "alice", "clinician")
        await add_user(app, "bob", "clinician")
        assert (await _login(client, "alice")).status_code == 200  # her usual address
        stranger = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("203.0.113.5", 4000)),
            base_url="http://hub",
        )
        async with stranger:
            # Alice's first sign-in, from an address not known yet, counted as one attempt.
            for _ in range(2):
                assert (await _login(stranger, "alice", "guess")).status_code == 401
            _assert_limited(await _login(stranger, "alice"))
            _assert_limited(await _login(stranger, "ALICE"))  # the same account, whatever the case
            # Another account from the same address is not affected by alice's limit.
            assert (await _login(stranger, "bob")).status_code == 200
        for _ in range(4):
            assert (await _login(client, "alice")).status_code == 200


async def test_login_limited_per_client_address(tmp_path: Path) -> None:
    settings = auth_settings(tmp_path, login_rate_per_ip=4, login_rate_per_user=100)
    async with hub_client(settings) as (app, client):
        await add_user(app, "alice", "clinician")
        # Password spraying: one address, many usernames (unknown ones count too).
        for i in range(4):
            assert (await _login(client, f"nobody{i}")).status_code == 401
        _assert_limited(await _login(client, "alice"))
        # Another address still gets in.
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("10.9.8.7", 4000)),
            base_url="http://hub",
        )
        async with other:
            assert (await _login(other, "alice")).status_code == 200


async def test_upload_creation_limited_per_caller(tmp_path: Path) -> None:
    settings = auth_settings(tmp_path, upload_create_rate=2)
    async with hub_client(settings) as (_app, client):
        headers = {**TUS, **bearer(AGENT_TOKEN)}
        for _ in range(2):
            assert (await client.post("/api/v1/uploads", headers=headers)).status_code == 201
        r = await client.post("/api/v1/uploads", headers=headers)
        _assert_limited(r)
        assert r.headers["Tus-Resumable"] == "1.0.0"


async def test_zero_disables_a_limit(tmp_path: Path) -> None:
    settings = auth_settings(tmp_path, upload_create_rate=0)
    async with hub_client(settings) as (_app, client):
        headers = {**TUS, **bearer(AGENT_TOKEN)}
        for _ in range(5):
            assert (await client.post("/api/v1/uploads", headers=headers)).status_code == 201


async def test_memory_window_slides() -> None:
    now = [100.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    rule = Rule("t", 2, 10.0)
    assert await limiter.hit(rule, "k") is None
    now[0] += 4
    assert await limiter.hit(rule, "k") is None
    wait = await limiter.hit(rule, "k")
    assert wait == pytest.approx(6.0)
    now[0] += 6.01  # the first hit left the window
    assert await limiter.hit(rule, "k") is None
    assert await limiter.hit(rule, "other") is None


# -- Redis -------------------------------------------------------------------------------------


async def _redis_up() -> bool:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix() -> Any:
    if not await _redis_up():
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is unreachable and CI is set")
        pytest.skip(f"no Redis at {REDIS_URL} (start one, or set RELAYPACS_TEST_REDIS_URL)")
    prefix = f"relaypacs-test:{uuid.uuid4().hex}:"
    yield prefix
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_redis_limiter_is_atomic_under_concurrency(redis_prefix: str) -> None:
    limiter = RedisLimiter(REDIS_URL, prefix=redis_prefix)
    try:
        rule = Rule("burst", 10, 30.0)
        results = await asyncio.gather(*(limiter.hit(rule, "k") for _ in range(40)))
        assert sum(r is None for r in results) == 10
        waits = [r for r in results if r is not None]
        assert all(0 < w <= 30.0 for w in waits)
    finally:
        await limiter.aclose()


async def test_redis_window_expires(redis_prefix: str) -> None:
    limiter = RedisLimiter(REDIS_URL, prefix=redis_prefix)
    try:
        rule = Rule("short", 1, 0.3)
        assert await limiter.hit(rule, "k") is None
        assert await limiter.hit(rule, "k") is not None
        await asyncio.sleep(0.35)
        assert await limiter.hit(rule, "k") is None
    finally:
        await limiter.aclose()


async def test_two_hubs_sharing_redis_share_the_limit(tmp_path: Path, redis_prefix: str) -> None:
    common: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "redis_key_prefix": redis_prefix,
        "login_rate_per_user": 4,
        "login_max_failures": 100,
        "upload_create_rate": 3,
    }
    one = auth_settings(tmp_path / "one", **common)
    # Replicas share one database as they share Redis.
    two = auth_settings(tmp_path / "two", database_url=one.resolved_database_url, **common)
    async with hub_client(one) as (app1, c1), hub_client(two) as (_app2, c2):
        await add_user(app1, "alice", "clinician")
        for client in (c1, c2, c1, c2):  # from an address alice never signed in from
            assert (await _login(client, "alice", "guess")).status_code == 401
        _assert_limited(await _login(c1, "alice"))
        _assert_limited(await _login(c2, "alice"))

        headers = {**TUS, **bearer(AGENT_TOKEN)}
        for client in (c1, c2, c2):
            assert (await client.post("/api/v1/uploads", headers=headers)).status_code == 201
        _assert_limited(await c1.post("/api/v1/uploads", headers=headers))


async def test_unreachable_redis_fails_open(tmp_path: Path) -> None:
    """A Redis outage must not lock every user out: the hub logs it and lets logins through."""
    settings = auth_settings(tmp_path, redis_url="redis://127.0.0.1:1/0", login_rate_per_user=1)
    async with hub_client(settings) as (app, client):
        await add_user(app, "alice", "clinician")
        for _ in range(3):
            assert (await _login(client, "alice")).status_code == 200


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_peek_does_not_count_and_reset_forgets(backend: str, redis_prefix: str) -> None:
    """Failed logins are checked with ``peek`` before the password and counted with ``hit``
    after it; a successful login ``reset``s the address's count."""
    limiter = (
        MemoryLimiter() if backend == "memory" else RedisLimiter(REDIS_URL, prefix=redis_prefix)
    )
    rule = Rule("fail", 2, 60)
    try:
        for _ in range(5):
            assert await limiter.peek(rule, "alice") is None  # peeking counts nothing
        assert await limiter.hit(rule, "alice") is None
        assert await limiter.hit(rule, "alice") is None
        wait = await limiter.peek(rule, "alice")
        assert wait is not None and 0 < wait <= 60
        assert await limiter.peek(rule, "bob") is None
        await limiter.reset(rule, "alice")
        assert await limiter.peek(rule, "alice") is None
    finally:
        await limiter.aclose()
