"""Sliding-window rate limits (login, tus upload creation).

Two backends with one interface: ``RedisLimiter`` (every hub replica sharing one Redis shares the
limits; one Lua script per hit, so the check-and-count is atomic) when ``RELAYPACS_HUB_REDIS_URL``
is set, else ``MemoryLimiter`` (one process: the embedded default). A hit answers ``None`` when
allowed, or the seconds until the caller may try again.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from relaypacs_hub.config import HubSettings

log = structlog.get_logger("relaypacs.hub.ratelimit")


@dataclass(frozen=True)
class Rule:
    """At most ``limit`` hits per ``window`` seconds for each key; ``limit`` 0 disables it."""

    name: str
    limit: int
    window: float


class Limiter(Protocol):
    async def hit(self, rule: Rule, key: str) -> float | None: ...

    async def peek(self, rule: Rule, key: str) -> float | None:
        """The wait a hit would answer now, without counting one."""
        ...

    async def reset(self, rule: Rule, key: str) -> None:
        """Forget the key's hits (a successful login clears its failures)."""
        ...

    async def aclose(self) -> None: ...


def _digest(key: str) -> str:
    # Keys hold usernames and addresses: keep them short and out of Redis in the clear.
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class MemoryLimiter:
    """Sliding log per key, in this process (the event loop serialises the hits)."""

    def __init__(self, *, max_keys: int = 100_000, clock: Any = time.monotonic) -> None:
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._max_keys = max_keys
        self._clock = clock

    async def hit(self, rule: Rule, key: str) -> float | None:
        return self._check(rule, key, count=True)

    async def peek(self, rule: Rule, key: str) -> float | None:
        return self._check(rule, key, count=False)

    def _check(self, rule: Rule, key: str, *, count: bool) -> float | None:
        if rule.limit <= 0:
            return None
        now: float = self._clock()
        if len(self._hits) >= self._max_keys:
            self._prune(now, rule.window)
        hits = self._hits.setdefault((rule.name, _digest(key)), deque())
        while hits and hits[0] <= now - rule.window:
            hits.popleft()
        if len(hits) >= rule.limit:
            return max(hits[0] + rule.window - now, 0.001)
        if count:
            hits.append(now)
        return None

    async def reset(self, rule: Rule, key: str) -> None:
        self._hits.pop((rule.name, _digest(key)), None)

    def _prune(self, now: float, window: float) -> None:
        for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - window]:
            del self._hits[k]

    async def aclose(self) -> None:
        self._hits.clear()


# KEYS[1]: the window's sorted set. ARGV: window (s), limit, a unique member, 1 to count a hit
# (0: only look). Redis' own clock, so replicas with skewed clocks agree. Answers 0 (allowed) or
# the wait in ms.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1]) * 1000
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  if ARGV[4] == '1' then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.ceil(window))
  end
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(math.ceil(tonumber(oldest[2]) + window - now), 1)
"""


class RedisLimiter:
    """The same sliding window in Redis, shared by every hub replica using ``prefix``."""

    def __init__(self, url: str, *, prefix: str = "relaypacs:ratelimit:") -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._script = self._redis.register_script(_SLIDING_WINDOW)
        self._prefix = prefix

    def _key(self, rule: Rule, key: str) -> str:
        return f"{self._prefix}{rule.name}:{_digest(key)}"

    async def hit(self, rule: Rule, key: str) -> float | None:
        if rule.limit <= 0:
            return None
        return await self._run(rule, key, count=True)

    async def peek(self, rule: Rule, key: str) -> float | None:
        if rule.limit <= 0:
            return None
        return await self._run(rule, key, count=False)

    async def reset(self, rule: Rule, key: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.delete(self._key(rule, key))
        except (RedisError, OSError) as exc:
            self._unavailable(rule, exc)

    async def _run(self, rule: Rule, key: str, *, count: bool) -> float | None:
        from redis.exceptions import RedisError

        args: list[str | float] = [rule.window, rule.limit, uuid.uuid4().hex, "1" if count else "0"]
        try:
            wait_ms = await self._script(keys=[self._key(rule, key)], args=args)
        except (RedisError, OSError) as exc:
            # Fail open: an unreachable Redis must not lock every user out; say so loudly.
            self._unavailable(rule, exc)
            return None
        wait = int(wait_ms)
        return wait / 1000 if wait > 0 else None

    @staticmethod
    def _unavailable(rule: Rule, exc: BaseException) -> None:
        log.error("rate_limit_backend_unavailable", rule=rule.name, error=type(exc).__name__)
        from relaypacs_hub import metrics

        metrics.dependency_error("redis")

    async def ping(self) -> None:
        """Raise when Redis does not answer (the readiness check)."""
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()


def build_limiter(redis_url: str | None, prefix: str) -> Limiter:
    if redis_url:
        return RedisLimiter(redis_url, prefix=prefix)
    return MemoryLimiter()


class RateLimited(Exception):
    def __init__(self, rule: Rule, retry_after: float) -> None:
        super().__init__(rule.name)
        self.rule = rule
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))

    @property
    def body(self) -> dict[str, str]:
        return {
            "code": "rate_limited",
            "detail": f"too many requests ({self.rule.name}: at most {self.rule.limit} per "
            f"{self.rule.window:g} s); retry after {self.retry_after_header} s",
        }


async def enforce(limiter: Limiter | None, rule: Rule, key: str) -> None:
    """Count a hit; raise ``RateLimited`` when the key is over its limit."""
    if limiter is None:
        return
    wait = await limiter.hit(rule, key)
    if wait is not None:
        log.warning("rate_limited", rule=rule.name)
        raise RateLimited(rule, wait)


def login_ip_rule(settings: HubSettings) -> Rule:
    return Rule("login-ip", settings.login_rate_per_ip, settings.login_rate_window_seconds)


def login_user_rule(settings: HubSettings) -> Rule:
    return Rule("login-user", settings.login_rate_per_user, settings.login_rate_window_seconds)


def login_fail_source_rule(settings: HubSettings) -> Rule:
    """Failed logins for one account from one address: past it, that address waits."""
    return Rule("login-fail-source", settings.login_max_failures, settings.login_lockout_seconds)


def login_fail_account_rule(settings: HubSettings) -> Rule:
    """Failed logins for one account from every address together (a spray): past it, only
    addresses the person signed in from before get through."""
    return Rule(
        "login-fail-account", settings.login_account_max_failures, settings.login_lockout_seconds
    )


def enroll_rule(settings: HubSettings) -> Rule:
    return Rule("enroll-ip", settings.enroll_rate_per_ip, settings.login_rate_window_seconds)


def upload_create_rule(settings: HubSettings) -> Rule:
    return Rule(
        "upload-create", settings.upload_create_rate, settings.upload_create_rate_window_seconds
    )
