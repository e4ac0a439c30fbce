"""Access tokens: short-lived JWTs signed with an Ed25519 key (EdDSA), so agents can verify them
with the public key alone. Verification pins the algorithm: ``none``, HS256 keyed with the public
key and any other algorithm are refused, as are a wrong ``aud``/``iss`` and an expired token.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from relaypacs_hub.config import HubSettings

ALGORITHM = "EdDSA"
DEV_KEY_NAME = "jwt-signing-key.pem"


class InvalidToken(Exception):
    """The bearer token is not a valid access token of this hub."""


@dataclass(frozen=True)
class AccessClaims:
    sub: str
    role: str
    fac: list[str]
    jti: str
    scope: str  # "full", or "totp-enroll" for a user who must enroll a second factor first
    # The refresh-token family the token was issued with (logout, reuse detection and account
    # changes revoke the family, and the access token with it). None: an enroll-only token.
    fam: str | None = None


def _write_new_key(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def check_key_setting(settings: HubSettings) -> None:
    if settings.environment == "production" and settings.jwt_private_key_file is None:
        raise ValueError(
            "RELAYPACS_HUB_JWT_PRIVATE_KEY_FILE must name an Ed25519 PEM key in production"
        )


def load_private_key(settings: HubSettings) -> Ed25519PrivateKey:
    """The signing key: the configured file, or (development only) one generated in data_dir."""
    check_key_setting(settings)
    path = settings.jwt_private_key_file
    if path is None:
        path = settings.data_dir / DEV_KEY_NAME
        if not path.exists():
            _write_new_key(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key (EdDSA)")
    return key


class TokenIssuer:
    def __init__(self, key: Ed25519PrivateKey, settings: HubSettings) -> None:
        self._key = key
        self.public_key: Ed25519PublicKey = key.public_key()
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.ttl = timedelta(minutes=settings.access_token_minutes)

    @property
    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def issue(
        self,
        sub: str,
        role: str,
        facilities: list[str],
        scope: str = "full",
        now: datetime | None = None,
        family: str | None = None,
    ) -> str:
        now = now or datetime.now(UTC)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "role": role,
            "fac": facilities,
            "scope": scope,
            "iat": int(now.timestamp()),
            "exp": int((now + self.ttl).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        if family is not None:
            claims["fam"] = family
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> AccessClaims:
        try:
            c = jwt.decode(
                token,
                self.public_key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        fac = c.get("fac")
        if not isinstance(c.get("role"), str) or not isinstance(fac, list):
            raise InvalidToken("role and fac claims are required")
        return AccessClaims(
            sub=str(c["sub"]),
            role=c["role"],
            fac=[str(f) for f in fac],
            jti=str(c["jti"]),
            scope=str(c.get("scope", "full")),
            fam=str(c["fam"]) if c.get("fam") is not None else None,
        )
