"""TOTP second factor (RFC 6238, via pyotp) and single-use recovery codes (kept as sha256)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

import pyotp

ISSUER = "RelayPACS"


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def verify_code(secret: str, code: str) -> bool:
    # One step either side forgives a phone clock 30 s off.
    return pyotp.TOTP(secret).verify(code.strip(), valid_window=1)


def matching_step(secret: str, code: str, now: datetime | None = None) -> int | None:
    """The time step (RFC 6238 T) whose code ``code`` is, within one step of now; else None.

    A login records the step it used, and a later login must use a later one: a code seen over
    someone's shoulder, or replayed from a log, opens nothing once used."""
    code = code.strip().replace(" ", "")
    if not code.isdigit():
        return None
    t = pyotp.TOTP(secret)
    current = t.timecode(now or datetime.now(UTC))
    for step in (current, current - 1, current + 1):
        if hmac.compare_digest(t.generate_otp(step), code):
            return step
    return None


def new_recovery_codes(n: int = 10) -> list[str]:
    return [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(n)]


def hash_code(code: str) -> str:
    return hashlib.sha256(code.strip().lower().encode()).hexdigest()


def consume_recovery_code(hashes: list[str], code: str) -> list[str] | None:
    """The remaining hashes once ``code`` is used, or None if it is not (or no longer) valid."""
    h = hash_code(code)
    for i, stored in enumerate(hashes):
        if hmac.compare_digest(stored, h):
            return hashes[:i] + hashes[i + 1 :]
    return None
