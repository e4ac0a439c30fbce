"""What LAN login keeps in the catalogue: the copy of the hub's verifiers, the LAN sessions,
failed logins per name and client address, and the small facts kept in ``lan_meta`` (when the
verifiers were last synced, the last TOTP time step accepted per user, steps not yet reported to
the hub).

The rules (who may log in, when a name is locked, which code is a replay) are
:mod:`relaypacs_agent.web.auth`'s; this module reads and writes the rows, each change in one
transaction with its audit record.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from relaypacs_agent.store.audit import append as audit_append
from relaypacs_agent.store.db import Store

_PENDING = "totp_pending:"


@dataclass(frozen=True)
class LanUser:
    """One user's verifiers as the last sync from the hub brought them."""

    username: str
    role: str
    facilities: tuple[str, ...]
    password_hash: str
    totp_secret: str | None
    totp_required: bool
    totp_last_step: int | None  # the hub's last accepted TOTP time step for the user


@dataclass(frozen=True)
class StoredSession:
    """A LAN session as kept: the token itself never is, only its SHA-256."""

    token_hash: str
    username: str
    role: str
    facilities: tuple[str, ...]
    offline: bool
    created_at: float
    expires_at: float
    source: str


@dataclass(frozen=True)
class PendingTotpStep:
    """A TOTP time step used here while the hub could not be told."""

    username: str
    step: int


def _user(row: sqlite3.Row) -> LanUser:
    return LanUser(
        username=row["username"],
        role=row["role"],
        facilities=tuple(json.loads(row["facilities"])),
        password_hash=row["password_hash"],
        totp_secret=row["totp_secret"],
        totp_required=bool(row["totp_required"]),
        totp_last_step=row["totp_last_step"],
    )


class LanAuthStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- lan_meta ---------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        rows = self.store.query("SELECT value FROM lan_meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def advance_totp_step(self, username: str, step: int, hub_step: int | None) -> bool:
        """Keep ``step`` as the user's last accepted TOTP time step if it is later than the one
        kept here and than ``hub_step`` (the hub's, from the verifiers); False, and nothing
        written, if it is not. One transaction, so two logins cannot both take the step."""
        key = f"totp_step:{username}"
        with self.store.tx() as conn:
            row = conn.execute("SELECT value FROM lan_meta WHERE key = ?", (key,)).fetchone()
            last = max(int(row[0]) if row else -1, int(hub_step) if hub_step is not None else -1)
            if last >= step:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO lan_meta (key, value) VALUES (?, ?)", (key, str(step))
            )
        return True

    def add_pending_totp_step(self, username: str, step: int) -> None:
        """Remember a step to report to the hub at the next sync (one per user, the latest)."""
        with self.store.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO lan_meta (key, value) VALUES (?, ?)",
                (f"{_PENDING}{username}", str(step)),
            )

    def pending_totp_steps(self) -> list[PendingTotpStep]:
        rows = self.store.query("SELECT key, value FROM lan_meta WHERE key LIKE 'totp_pending:%'")
        return [
            PendingTotpStep(str(r["key"]).removeprefix(_PENDING), int(r["value"])) for r in rows
        ]

    def drop_pending_totp_step(self, pending: PendingTotpStep) -> None:
        """Forget a reported step, unless a later one was kept for the user meanwhile."""
        with self.store.tx() as conn:
            conn.execute(
                "DELETE FROM lan_meta WHERE key = ? AND value = ?",
                (f"{_PENDING}{pending.username}", str(pending.step)),
            )

    # -- verifiers --------------------------------------------------------------------------

    def user(self, username: str) -> LanUser | None:
        rows = self.store.query("SELECT * FROM lan_users WHERE username = ?", (username,))
        return _user(rows[0]) if rows else None

    def replace_users(self, users: list[LanUser], synced_at: float) -> None:
        """Make ``users`` the whole copy of the verifiers, in one transaction: a user left out
        (disabled at the hub) is gone; one whose password hash changed (changed or reset at the
        hub) loses their LAN sessions, as at the hub. Audited, with the sync time kept as
        ``lan_meta['verifiers_synced_at']``."""
        with self.store.tx() as conn:
            before = {
                str(r[0]): str(r[1])
                for r in conn.execute("SELECT username, password_hash FROM lan_users")
            }
            conn.execute("DELETE FROM lan_users")
            for u in users:
                conn.execute(
                    """INSERT INTO lan_users (username, role, facilities, password_hash,
                       totp_secret, totp_required, totp_last_step, synced_at)
                       VALUES (?,?,?,?,?,?,?,?)""",
                    (
                        u.username,
                        u.role,
                        json.dumps(list(u.facilities)),
                        u.password_hash,
                        u.totp_secret,
                        1 if u.totp_required else 0,
                        u.totp_last_step,
                        synced_at,
                    ),
                )
            now_hashes = {u.username: u.password_hash for u in users}
            for name, old_hash in before.items():
                if name in now_hashes and now_hashes[name] != old_hash:
                    ended = conn.execute(
                        "DELETE FROM lan_sessions WHERE username = ?", (name,)
                    ).rowcount
                    if ended:
                        audit_append(
                            conn,
                            "agent",
                            "lan.sessions_ended",
                            name,
                            reason="password_changed",
                            sessions=ended,
                        )
            conn.execute(
                "INSERT OR REPLACE INTO lan_meta (key, value) VALUES ('verifiers_synced_at', ?)",
                (str(synced_at),),
            )
            audit_append(conn, "agent", "lan.verifiers_synced", "hub", users=len(users))

    # -- failed logins ----------------------------------------------------------------------

    def locked_until(self, who: str, client: str) -> float:
        """Until when ``who`` is locked out from ``client`` (0 when not)."""
        rows = self.store.query(
            "SELECT locked_until FROM lan_login_failures WHERE username = ? AND source = ?",
            (who, client),
        )
        return float(rows[0]["locked_until"] or 0) if rows else 0.0

    def record_failed_login(
        self,
        who: str,
        client: str,
        reason: str,
        *,
        now: float,
        lock_after: int,
        lock_seconds: float,
    ) -> None:
        """Count a failed login of ``who`` from ``client`` and audit it, in one transaction; the
        ``lock_after``-th failure locks the pair for ``lock_seconds`` and starts the count
        again."""
        with self.store.tx() as conn:
            row = conn.execute(
                "SELECT failures FROM lan_login_failures WHERE username = ? AND source = ?",
                (who, client),
            ).fetchone()
            failures = (row[0] if row else 0) + 1
            locked = now + lock_seconds if failures >= lock_after else None
            if locked is not None:
                failures = 0  # the next lock needs as many failures again
            conn.execute(
                "INSERT OR REPLACE INTO lan_login_failures (username, source, failures, "
                "locked_until) VALUES (?,?,?,?)",
                (who, client, failures, locked),
            )
            audit_append(
                conn,
                who,
                "lan.login",
                who,
                outcome="minor_failure",
                source=client,
                reason=reason,
            )

    def audit_login(self, who: str, client: str, outcome: str, **details: Any) -> None:
        """A login refused for another reason than its credentials: audited only."""
        with self.store.tx() as conn:
            audit_append(conn, who, "lan.login", who, outcome=outcome, source=client, **details)

    # -- sessions ---------------------------------------------------------------------------

    def open_session(self, session: StoredSession) -> None:
        """Keep a new session, in one transaction with the rest of a successful login: the
        name's failed logins from that address are forgotten, expired sessions dropped, and
        the login audited."""
        with self.store.tx() as conn:
            conn.execute(
                "DELETE FROM lan_login_failures WHERE username = ? AND source = ?",
                (session.username, session.source),
            )
            conn.execute("DELETE FROM lan_sessions WHERE expires_at < ?", (session.created_at,))
            conn.execute(
                """INSERT INTO lan_sessions (token_hash, username, role, facilities, offline,
                   created_at, expires_at, source) VALUES (?,?,?,?,?,?,?,?)""",
                (
                    session.token_hash,
                    session.username,
                    session.role,
                    json.dumps(list(session.facilities)),
                    1 if session.offline else 0,
                    session.created_at,
                    session.expires_at,
                    session.source,
                ),
            )
            audit_append(
                conn,
                session.username,
                "lan.login",
                session.username,
                source=session.source,
                offline=session.offline,
            )

    def session(self, token_hash: str) -> StoredSession | None:
        rows = self.store.query("SELECT * FROM lan_sessions WHERE token_hash = ?", (token_hash,))
        if not rows:
            return None
        r = rows[0]
        return StoredSession(
            token_hash=r["token_hash"],
            username=r["username"],
            role=r["role"],
            facilities=tuple(json.loads(r["facilities"])),
            offline=bool(r["offline"]),
            created_at=r["created_at"],
            expires_at=r["expires_at"],
            source=r["source"],
        )

    def end_session(self, token_hash: str, username: str, client: str) -> None:
        """A logout: the session goes, audited in the same transaction."""
        with self.store.tx() as conn:
            conn.execute("DELETE FROM lan_sessions WHERE token_hash = ?", (token_hash,))
            audit_append(conn, username, "lan.logout", username, source=client)
