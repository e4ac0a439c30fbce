"""Login, refresh-token rotation, logout, TOTP enrollment and user administration.

Every outcome a person causes is audited with their username as actor; passwords, codes and tokens
never reach the audit log or the logs.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs_hub.audit import audit
from relaypacs_hub.auth import totp
from relaypacs_hub.auth.passwords import hash_password, verify_password
from relaypacs_hub.auth.tokens import TokenIssuer
from relaypacs_hub.config import HubSettings
from relaypacs_hub.db.models import LoginSource, RefreshToken, User, utcnow
from relaypacs_hub.ratelimit import (
    Limiter,
    login_fail_account_rule,
    login_fail_source_rule,
    login_user_rule,
)
from relaypacs_shared.audit import unknown_name

ENROLL_SCOPE = "totp-enroll"


class AuthError(Exception):
    """A refused authentication step: the HTTP status and a problem code for the client."""

    def __init__(self, status: int, code: str, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str | None
    expires_in: int
    scope: str = "full"


def facilities_of(user: User) -> list[str]:
    facilities: list[str] = json.loads(user.facilities_json)
    return facilities


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_BAD_LOGIN = AuthError(401, "invalid_credentials", "wrong username or password")


def _actor(username: str, user: User | None) -> str:
    return username if user is not None else unknown_name(username)


def _minutes(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


@dataclass(frozen=True)
class _FailureKeys:
    """The limiter keys of one login: the account and address, and the account.

    Keyed by the name as typed (case-folded), whether or not it exists, and by the account's
    password hash, so an admin's password reset starts the counts afresh."""

    per_source: str
    per_account: str
    source_digest: str

    @classmethod
    def of(cls, username: str, source: str | None, user: User | None) -> _FailureKeys:
        generation = _sha256(user.password_hash)[:16] if user is not None else ""
        account = f"{username.casefold()}\n{generation}"
        digest = _sha256(source or "unknown")
        return cls(f"{account}\n{digest}", account, digest)


class AuthService:
    def __init__(
        self,
        settings: HubSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        issuer: TokenIssuer,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.issuer = issuer
        # Failed logins are counted here, per account and address and per account, for names
        # that exist and names that do not alike (the answers must not tell them apart).
        self.limiter = limiter

    # -- tokens --------------------------------------------------------------------------------

    async def _issue(self, session: AsyncSession, user: User, family: str | None) -> TokenPair:
        family = family or str(uuid.uuid4())
        access = self.issuer.issue(user.username, user.role, facilities_of(user), family=family)
        refresh = secrets.token_urlsafe(32)
        session.add(
            RefreshToken(
                token_hash=_sha256(refresh),
                family_id=family,
                user_id=user.id,
                expires_at=utcnow() + timedelta(days=self.settings.refresh_token_days),
            )
        )
        return TokenPair(access, refresh, int(self.issuer.ttl.total_seconds()))

    # -- login ---------------------------------------------------------------------------------

    async def login(
        self,
        username: str,
        password: str,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        source: str | None = None,
    ) -> TokenPair:
        # A refusal is raised after the commit: failure counts and audit records must persist.
        async with self.sessionmaker() as session, session.begin():
            result = await self._login(
                session, username, password, totp_code, recovery_code, source
            )
        if isinstance(result, AuthError):
            raise result
        return result

    async def _login(
        self,
        session: AsyncSession,
        username: str,
        password: str,
        totp_code: str | None,
        recovery_code: str | None,
        source: str | None,
    ) -> TokenPair | AuthError:
        # Names are unique whatever their case (migration 0012): "Alice" typed on a phone that
        # capitalises the first letter is alice.
        user = await session.scalar(
            select(User).where(func.lower(User.username) == username.casefold())
        )
        if user is not None:
            username = user.username
        now = utcnow()
        keys = _FailureKeys.of(username, source, user)
        known = await self._known_source(session, user, keys.source_digest, now)
        refused = await self._throttled(keys, known)
        if refused is not None:
            await audit(
                session, _actor(username, user), "login", _actor(username, user), "minor_failure",
                source, reason=refused.code,
            )  # fmt: skip
            return refused
        ok = verify_password(user.password_hash if user else None, password)
        if user is None or user.disabled or not ok:
            reason = "unknown_user" if user is None else "disabled" if user.disabled else "password"
            await self._count_failure(keys, known, user, now)
            # An unknown name is often a password typed into the wrong field: the audit keeps
            # only a short hash of it (enough to see one name tried again and again).
            who = _actor(username, user)
            await audit(session, who, "login", who, "minor_failure", source, reason=reason)
            return _BAD_LOGIN
        if user.totp_enabled and not await self._second_factor(
            session, user, totp_code, recovery_code
        ):
            await self._count_failure(keys, known, user, now)
            reason = "totp_missing" if not (totp_code or recovery_code) else "totp"
            await audit(
                session, username, "login", username, "minor_failure", source, reason=reason
            )
            return AuthError(401, "totp_required", "a valid TOTP or recovery code is required")
        if self.limiter is not None:
            await self.limiter.reset(login_fail_source_rule(self.settings), keys.per_source)
        await self._remember_source(session, user, keys.source_digest, now)
        if user.role in self.settings.totp_required_roles and not user.totp_enabled:
            # The role needs a second factor this user has not enrolled: a token that can
            # only enroll one, and no refresh token.
            await audit(session, username, "login", username, "success", source, scope=ENROLL_SCOPE)
            access = self.issuer.issue(
                user.username, user.role, facilities_of(user), scope=ENROLL_SCOPE
            )
            return TokenPair(access, None, int(self.issuer.ttl.total_seconds()), ENROLL_SCOPE)
        pair = await self._issue(session, user, None)
        await audit(session, username, "login", username, "success", source)
        return pair

    async def _throttled(self, keys: _FailureKeys, known: bool) -> AuthError | None:
        """The refusal a login gets before its password is even checked, if any.

        Answers are the same whether the name exists or not. A stranger's failures lock only
        the stranger's address; a spray from many addresses holds the account to the addresses
        its owner signed in from before (OWASP ASVS 2.2.1: no lockout anyone can cause)."""
        if self.limiter is None:
            return None
        s = self.settings
        wait = await self.limiter.peek(login_fail_source_rule(s), keys.per_source)
        if wait is not None:
            return AuthError(
                429, "login_locked",
                f"too many failed sign-ins for this account from this address; try again in "
                f"{_minutes(wait)}, or ask an admin to reset the password",
                retry_after=int(wait) + 1,
            )  # fmt: skip
        if known:
            return None
        wait = await self.limiter.peek(login_fail_account_rule(s), keys.per_account)
        if wait is not None:
            return AuthError(
                429, "login_locked",
                f"this account is taking sign-ins only from addresses it used before, after many "
                f"failed sign-ins from elsewhere; try again in {_minutes(wait)} or from a known "
                f"device, or ask an admin to reset the password",
                retry_after=int(wait) + 1,
            )  # fmt: skip
        wait = await self.limiter.hit(login_user_rule(s), keys.per_account)
        if wait is not None:
            rule = login_user_rule(s)
            return AuthError(
                429, "rate_limited",
                f"too many requests ({rule.name}: at most {rule.limit} per {rule.window:g} s); "
                f"retry after {int(wait) + 1} s",
                retry_after=int(wait) + 1,
            )  # fmt: skip
        return None

    async def _count_failure(
        self, keys: _FailureKeys, known: bool, user: User | None, now: datetime
    ) -> None:
        if self.limiter is None:
            return
        s = self.settings
        await self.limiter.hit(login_fail_source_rule(s), keys.per_source)
        if known:
            return
        await self.limiter.hit(login_fail_account_rule(s), keys.per_account)
        wait = await self.limiter.peek(login_fail_account_rule(s), keys.per_account)
        if wait is not None and user is not None:
            # Shown to admins (the users list); agents do not receive it: a spray at the hub
            # must not lock anyone out of the facility's LAN.
            user.locked_until = now + timedelta(seconds=wait)

    async def _known_source(
        self, session: AsyncSession, user: User | None, digest: str, now: datetime
    ) -> bool:
        if user is None or self.settings.login_known_source_days <= 0:
            return False
        seen = await session.scalar(
            select(LoginSource.last_success_at)
            .where(LoginSource.user_id == user.id)
            .where(LoginSource.source_digest == digest)
        )
        fresh = now - timedelta(days=self.settings.login_known_source_days)
        return seen is not None and seen > fresh

    async def _remember_source(
        self, session: AsyncSession, user: User, digest: str, now: datetime
    ) -> None:
        row = await session.get(LoginSource, (user.id, digest))
        if row is None:
            dialect = session.get_bind().dialect.name
            insert = pg_insert if dialect == "postgresql" else sqlite_insert
            await session.execute(
                insert(LoginSource)
                .values(user_id=user.id, source_digest=digest, last_success_at=now)
                .on_conflict_do_update(
                    index_elements=["user_id", "source_digest"], set_={"last_success_at": now}
                )
            )
        else:
            row.last_success_at = now

    async def _second_factor(
        self, session: AsyncSession, user: User, code: str | None, recovery: str | None
    ) -> bool:
        step = totp.matching_step(user.totp_secret, code) if code and user.totp_secret else None
        if step is not None:
            # Atomic: of two logins racing with the same code, one wins.
            used = await session.execute(
                update(User)
                .where(User.id == user.id)
                .where(or_(User.totp_last_step.is_(None), User.totp_last_step < step))
                .values(totp_last_step=step)
            )
            if int(getattr(used, "rowcount", 0) or 0) == 1:
                return True
            await audit(session, user.username, "totp_code_replayed", user.username,
                        "minor_failure")  # fmt: skip
        if recovery:
            left = totp.consume_recovery_code(json.loads(user.recovery_codes_json), recovery)
            if left is not None:
                user.recovery_codes_json = json.dumps(left)
                await audit(
                    session, user.username, "recovery_code_used", user.username, left=len(left)
                )
                return True
        return False

    async def claim_totp_step(
        self, username: str, step: int, facility: str | None, device: str, source: str | None
    ) -> bool | None:
        """Record a TOTP time step used at an agent; False if it (or a later one) was used
        already, None if the user has no TOTP or is not of the device's facility."""
        async with self.sessionmaker() as session, session.begin():
            user = await session.scalar(select(User).where(User.username == username))
            if (
                user is None
                or user.disabled
                or not user.totp_enabled
                or (facility is not None and facility not in facilities_of(user))
            ):
                return None
            used = await session.execute(
                update(User)
                .where(User.id == user.id)
                .where(or_(User.totp_last_step.is_(None), User.totp_last_step < step))
                .values(totp_last_step=step)
            )
            accepted = int(getattr(used, "rowcount", 0) or 0) == 1
            await audit(
                session, device, "totp_step_claimed" if accepted else "totp_code_replayed",
                username, "success" if accepted else "minor_failure", source,
            )  # fmt: skip
            return accepted

    # -- refresh and logout --------------------------------------------------------------------

    async def refresh(self, token: str, source: str | None = None) -> TokenPair:
        async with self.sessionmaker() as session, session.begin():
            result = await self._refresh(session, token, source)
        if isinstance(result, AuthError):
            raise result
        return result

    async def _refresh(
        self, session: AsyncSession, token: str, source: str | None
    ) -> TokenPair | AuthError:
        row = await session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == _sha256(token))
        )
        user = await session.get(User, row.user_id) if row is not None else None
        actor = user.username if user else "?"
        now = utcnow()
        if row is None or user is None:
            await audit(session, actor, "refresh", "?", "minor_failure", source, reason="unknown")
            return AuthError(401, "invalid_refresh_token", "unknown refresh token")
        if row.revoked_at is not None:
            # A rotated (or logged-out) token came back: someone holds a copy. Revoke them all.
            await self._revoke_family(session, row.family_id, now)
            await audit(session, actor, "refresh", actor, "minor_failure", source, reason="reuse")
            return AuthError(401, "invalid_refresh_token", "refresh token already used")
        if row.expires_at <= now or user.disabled:
            await audit(session, actor, "refresh", actor, "minor_failure", source, reason="expired")
            return AuthError(401, "invalid_refresh_token", "refresh token expired")
        row.revoked_at = now
        pair = await self._issue(session, user, row.family_id)
        await audit(session, actor, "refresh", actor, "success", source)
        return pair

    async def _revoke_family(self, session: AsyncSession, family: str, now: datetime) -> None:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def logout(self, token: str, source: str | None = None) -> None:
        async with self.sessionmaker() as session, session.begin():
            row = await session.scalar(
                select(RefreshToken).where(RefreshToken.token_hash == _sha256(token))
            )
            if row is None:
                raise AuthError(401, "invalid_refresh_token", "unknown refresh token")
            user = await session.get(User, row.user_id)
            actor = user.username if user else "?"
            await self._revoke_family(session, row.family_id, utcnow())
            await audit(session, actor, "logout", actor, "success", source)

    # -- TOTP ----------------------------------------------------------------------------------

    async def enroll_totp(self, username: str) -> str:
        """A new (unconfirmed) secret; its provisioning URI is what the PWA shows as a QR code."""
        async with self.sessionmaker() as session, session.begin():
            user = await self._user(session, username)
            if user.totp_enabled:
                raise AuthError(409, "totp_already_enabled", "TOTP is already enabled")
            user.totp_secret = totp.new_secret()
            user.updated_at = utcnow()
            await audit(session, username, "totp_enroll", username)
            return totp.provisioning_uri(user.totp_secret, username)

    async def confirm_totp(self, username: str, code: str) -> list[str]:
        """Turn TOTP on after a first valid code; returns the recovery codes (shown once)."""
        async with self.sessionmaker() as session, session.begin():
            user = await self._user(session, username)
            if user.totp_enabled or not user.totp_secret:
                raise AuthError(409, "totp_not_pending", "start with /auth/totp/enroll")
            step = totp.matching_step(user.totp_secret, code)
            failed = step is None
            if step is not None:
                user.totp_last_step = step  # the confirming code cannot log in afterwards
        if failed:
            await audit(self.sessionmaker, username, "totp_confirm", username, "minor_failure")
            raise AuthError(400, "invalid_totp_code", "the code does not match")
        async with self.sessionmaker() as session, session.begin():
            user = await self._user(session, username)
            codes = totp.new_recovery_codes()
            user.totp_enabled = True
            user.recovery_codes_json = json.dumps([totp.hash_code(c) for c in codes])
            user.updated_at = utcnow()
            await audit(session, username, "totp_confirm", username)
            return codes

    async def _user(self, session: AsyncSession, username: str) -> User:
        user = await session.scalar(select(User).where(User.username == username))
        if user is None or user.disabled:
            raise AuthError(401, "unauthorized", "unknown or disabled user")
        return user

    async def family_alive(self, family: str) -> bool:
        """Whether a refresh-token family still holds a usable token: an access token of a
        family that was logged out, caught reused, or revoked by an account change is refused
        at once instead of living out its minutes."""
        async with self.sessionmaker() as session:
            found = await session.scalar(
                select(RefreshToken.id)
                .where(
                    RefreshToken.family_id == family,
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > utcnow(),
                )
                .limit(1)
            )
        return found is not None

    async def active_user(self, username: str) -> User | None:
        async with self.sessionmaker() as session:
            user = await session.scalar(select(User).where(User.username == username))
        return None if user is None or user.disabled else user

    # -- users (admin) -------------------------------------------------------------------------

    async def create_user(
        self,
        actor: str,
        username: str,
        password: str,
        role: str,
        facilities: list[str],
    ) -> User:
        async with self.sessionmaker() as session, session.begin():
            # "Alice" and "alice" would be two accounts to the hub but one person to everybody
            # reading an audit log or a study list: names are unique whatever their case.
            exists = await session.scalar(
                select(User.username).where(func.lower(User.username) == username.lower())
            )
            if exists is not None:
                detail = (
                    f"user {username} already exists"
                    if exists == username
                    else f"user {exists} already exists (names differing only by case are one name)"
                )
                raise AuthError(409, "user_exists", detail)
            user = User(
                username=username,
                role=role,
                facilities_json=json.dumps(sorted(set(facilities))),
                password_hash=hash_password(password),
            )
            session.add(user)
            await session.flush()
            await audit(session, actor, "user_create", username, role=role, facilities=facilities)
        return user

    async def revoke_all(self, session: AsyncSession, user_id: int) -> None:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
