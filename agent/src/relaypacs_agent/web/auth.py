"""LAN login at the agent, with or without the WAN.

The hub is the authority for people. The agent keeps a copy of the *verifiers* of its facility's
users (argon2id hashes, TOTP secrets where a user has a second factor; never a plaintext
password), fetched from ``GET /api/v1/devices/verifiers`` at start, every ``verifier_sync_seconds``
and before a login of a username it does not know. A login is always checked here against that
copy, so it works the same with the WAN down; the session says whether the copy could be
refreshed (``offline``).

Sessions are opaque random tokens; the catalogue keeps only their SHA-256. Failed logins lock a
username from one client address only (a stranger on the LAN cannot lock a colleague out, and a
password spray at the hub does not reach the LAN), alike for names that do not exist, and login
attempts are rate limited per client address. A TOTP code works once across the agent and the
hub: the agent claims its time step at the hub when it can, and reports it later when it cannot.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyotp
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from relaypacs_agent.store.db import Store
from relaypacs_agent.store.lan_auth import LanAuthStore, LanUser, StoredSession
from relaypacs_shared.audit import unknown_name
from relaypacs_shared.errors import RelayError, is_transient

log = structlog.get_logger("relaypacs.agent.web")

UPLOADERS = frozenset({"clinician", "radiographer", "admin"})
ROLES = frozenset({"clinician", "radiographer", "radiologist", "admin"})
TOKEN_PREFIX = "rpl_"  # noqa: S105 - a prefix, not a secret
LOCK_AFTER = 5
LOCK_SECONDS = 300.0
LOGIN_SYNC_SECONDS = 2.0

# Verifying against a made-up hash keeps an unknown username as slow as a wrong password.
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class LoginRefused(RelayError):
    def __init__(self, status: int, code: str, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class LanSession:
    username: str
    role: str
    facilities: list[str]
    offline: bool
    expires_at: float
    token_hash: str = field(repr=False, default="")


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding window, in memory:
    the agent is one process)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> float | None:
        """Record an event; None if allowed, else the seconds until the next one would be."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._events.setdefault(key, deque())
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.limit:
                return q[0] + self.window - now
            q.append(now)
            if len(self._events) > 10_000:  # bound memory under a spray of addresses
                self._events = {
                    k: v for k, v in self._events.items() if v and v[-1] > now - self.window
                }
            return None


class LanAuth:
    def __init__(
        self,
        store: Store,
        *,
        fetch_verifiers: Callable[[], dict[str, Any]] | None,
        facility: Callable[[], str | None],
        claim_totp_step: Callable[[str, int], bool] | None = None,
        session_seconds: float = 12 * 3600,
        sync_seconds: float = 300.0,
        login_rate: tuple[int, float] = (10, 60.0),
    ) -> None:
        self.db = LanAuthStore(store)
        self.fetch_verifiers = fetch_verifiers
        self.claim_totp_step = claim_totp_step
        self.facility = facility
        self.session_seconds = session_seconds
        self.sync_seconds = sync_seconds
        self.limiter = RateLimiter(*login_rate)
        self._sync_lock = threading.Lock()
        self._last_login_sync = -LOGIN_SYNC_SECONDS
        self.hub_reachable: bool | None = None
        self.last_sync_at: float | None = self._meta_float("verifiers_synced_at")

    # -- verifier cache ---------------------------------------------------------------------

    def _meta_float(self, key: str) -> float | None:
        value = self.db.meta(key)
        return float(value) if value is not None else None

    def sync(self) -> bool:
        """Refresh the cached verifiers from the hub; False if the hub could not be asked."""
        if self.fetch_verifiers is None:
            return False
        with self._sync_lock:
            try:
                feed = self.fetch_verifiers()
            except RelayError as exc:
                self.hub_reachable = False
                log.info("verifiers_sync_failed", error=type(exc).__name__)
                return False
            now = time.time()
            users = [
                LanUser(
                    username=str(u["username"]),
                    role=str(u["role"]),
                    facilities=tuple(u.get("facilities") or []),
                    password_hash=str(u["password_hash"]),
                    totp_secret=u.get("totp_secret") or None,
                    totp_required=bool(u.get("totp_required")),
                    totp_last_step=_int_or_none(u.get("totp_last_step")),
                )
                for u in feed.get("users", [])
            ]
            # A user disabled at the hub is gone here; a password changed (or reset) at the hub
            # ends the user's LAN sessions, as it ends their sessions at the hub.
            self.db.replace_users(users, now)
            self.hub_reachable = True
            self.last_sync_at = now
            log.info("verifiers_synced", users=len(users))
        self._report_totp_steps()
        return True

    def _report_totp_steps(self) -> None:
        """Tell the hub the TOTP steps used here while it could not be asked."""
        if self.claim_totp_step is None:
            return
        for pending in self.db.pending_totp_steps():
            try:
                self.claim_totp_step(pending.username, pending.step)
            except RelayError as exc:
                if is_transient(exc):
                    return  # the hub went away again: the next sync tries once more
                # Refused for good (the user is gone or has no TOTP any more): nothing to tell.
                log.info("totp_step_report_refused", error=type(exc).__name__)
            self.db.drop_pending_totp_step(pending)

    def sync_if_stale(self) -> None:
        if self.last_sync_at is None or time.time() - self.last_sync_at >= self.sync_seconds:
            self.sync()

    def _may_sync_for_login(self) -> bool:
        now = time.monotonic()
        with self._sync_lock:
            if now - self._last_login_sync < LOGIN_SYNC_SECONDS:
                return False
            self._last_login_sync = now
            return True

    def _user(self, username: str) -> LanUser | None:
        return self.db.user(username)

    # -- login ------------------------------------------------------------------------------

    def login(
        self,
        username: str,
        password: str,
        totp_code: str | None,
        client: str,
    ) -> tuple[str, LanSession]:
        """Check a login against the cached verifiers; answer a new session token."""
        wait = self.limiter.hit(client)
        if wait is not None:
            raise LoginRefused(
                429,
                "rate_limited",
                "too many login attempts; wait a moment",
                retry_after=max(1, int(wait + 0.999)),
            )
        user = self._user(username)
        if user is None and self.hub_reachable is not False and self._may_sync_for_login():
            # Someone added at the hub since the last sync: ask now. Not while the hub is known
            # to be unreachable (a mistyped name must not wait out a connection timeout), and at
            # most every LOGIN_SYNC_SECONDS, so unknown names cannot drive calls to the hub.
            self.sync()
            user = self._user(username)
        if user is None and self.last_sync_at is None:
            _verify_password(_DUMMY_HASH, password)
            raise LoginRefused(
                503,
                "no_verifiers",
                "this agent has not reached the hub yet, so nobody can log in here; "
                "check the agent's connection to the hub",
            )
        now = time.time()
        # A name nobody has is kept (lockout counter, audit) only as a hash: it is often a
        # password typed into the wrong field.
        who = username if user is not None else unknown_name(username)
        locked = self._locked_until(who, client)
        if locked > now:
            self._audit_login(who, client, "minor_failure", reason="locked")
            raise LoginRefused(
                423,
                "locked",
                "too many failed logins for this name from this device; try again in "
                f"{max(1, int((locked - now + 59) // 60))} min, or ask an admin to reset the "
                "password",
                retry_after=int(locked - now) + 1,
            )
        ok = _verify_password(user.password_hash if user else _DUMMY_HASH, password)
        if not ok or user is None:
            self._failed(who, client, "bad_password")
            raise LoginRefused(401, "invalid_credentials", "wrong username or password")
        if not self._facility_ok(user):
            self._audit_login(username, client, "minor_failure", reason="facility")
            raise LoginRefused(403, "wrong_facility", "your account is not for this facility")
        if user.totp_secret:
            if not totp_code:
                raise LoginRefused(401, "totp_required", "enter the 6-digit code of your app")
            if not self._totp_ok(user, totp_code):
                self._failed(username, client, "bad_totp")
                raise LoginRefused(401, "invalid_credentials", "wrong or expired code")
        elif user.totp_required:
            self._audit_login(username, client, "minor_failure", reason="totp_not_enrolled")
            raise LoginRefused(
                403,
                "totp_enrollment_required",
                "your role needs a second factor: sign in at the hub's dashboard once to set it up",
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        session = LanSession(
            username=username,
            role=user.role,
            facilities=list(user.facilities),
            offline=self.hub_reachable is not True,
            expires_at=now + self.session_seconds,
            token_hash=_sha256(token),
        )
        self.db.open_session(
            StoredSession(
                token_hash=session.token_hash,
                username=username,
                role=session.role,
                facilities=tuple(session.facilities),
                offline=session.offline,
                created_at=now,
                expires_at=session.expires_at,
                source=client,
            )
        )
        return token, session

    def _facility_ok(self, user: LanUser) -> bool:
        mine = self.facility()
        # An unrestricted account (no facilities) is valid everywhere, as at the hub.
        return mine is None or not user.facilities or mine in user.facilities

    def _totp_ok(self, user: LanUser, code: str) -> bool:
        code = code.strip().replace(" ", "")
        if not code.isascii() or not code.isdigit():
            return False
        assert user.totp_secret is not None  # asked only of a user with a second factor
        totp = pyotp.TOTP(user.totp_secret)
        current = totp.timecode(datetime.now(UTC))
        step = next(
            (
                t
                for t in (current, current - 1, current + 1)
                if hmac.compare_digest(totp.generate_otp(t), code)
            ),
            None,
        )
        if step is None:
            return False
        # A code opens one session only, and so does any older one: keep the time step of the
        # last accepted code per user, here and (from the verifiers) at the hub, and require a
        # later one (RFC 6238 section 5.2).
        username = user.username
        if not self.db.advance_totp_step(username, step, user.totp_last_step):
            return False
        return self._claim_at_hub(username, step)

    def _claim_at_hub(self, username: str, step: int) -> bool:
        """Claim the step at the hub, so the code cannot be used there too; with the hub out
        of reach the login goes on and the step is reported at the next sync."""
        if self.claim_totp_step is None:
            return True
        if self.hub_reachable is not False:
            try:
                accepted = self.claim_totp_step(username, step)
            except RelayError as exc:
                if not is_transient(exc):
                    log.info("totp_step_claim_refused", error=type(exc).__name__)
                    return True  # the hub does not know this user's TOTP: the local check holds
            else:
                if not accepted:
                    self._audit_login(username, "hub", "minor_failure", reason="totp_replayed")
                return accepted
        self.db.add_pending_totp_step(username, step)
        return True

    def _locked_until(self, username: str, client: str) -> float:
        return self.db.locked_until(username, client)

    def _failed(self, username: str, client: str, reason: str) -> None:
        self.db.record_failed_login(
            username,
            client,
            reason,
            now=time.time(),
            lock_after=LOCK_AFTER,
            lock_seconds=LOCK_SECONDS,
        )

    def _audit_login(self, username: str, client: str, outcome: str, **details: Any) -> None:
        self.db.audit_login(username, client, outcome, **details)

    # -- sessions ---------------------------------------------------------------------------

    def session(self, token: str) -> LanSession | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = _sha256(token)
        r = self.db.session(digest)
        if r is None or r.expires_at < time.time():
            return None
        # The account as the last copy of the hub's verifiers has it: gone (disabled) or
        # moved to another facility ends the session; a changed role applies at once.
        user = self._user(r.username)
        if user is None:
            return None
        if not self._facility_ok(user):
            return None
        return LanSession(
            username=r.username,
            role=user.role,
            facilities=list(user.facilities),
            offline=r.offline,
            expires_at=r.expires_at,
            token_hash=digest,
        )

    def logout(self, session: LanSession, client: str) -> None:
        self.db.end_session(session.token_hash, session.username, client)


def _verify_password(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
