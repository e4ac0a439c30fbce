"""People log in here: access + refresh tokens, rotation, logout, TOTP enrollment.

Login, refresh and logout are public (their credential is in the body); ``me`` and TOTP
enrollment take an access token, including the enroll-only one a 2FA-required role gets.
"""

from __future__ import annotations

from typing import NoReturn

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from relaypacs_hub.api.deps import PublicAccess, State, UserAuth
from relaypacs_hub.auth.service import AuthError, TokenPair
from relaypacs_hub.ratelimit import RateLimited, enforce, login_ip_rule

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    totp_code: str | None = None
    recovery_code: str | None = None


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str | None
    token_type: str = "bearer"  # noqa: S105 (the OAuth 2 token type, not a secret)
    expires_in: int
    scope: str

    @classmethod
    def of(cls, pair: TokenPair) -> TokenResponse:
        return cls(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
            scope=pair.scope,
        )


class Me(BaseModel):
    username: str
    role: str | None
    facilities: list[str]
    scope: str


class TotpEnrollment(BaseModel):
    provisioning_uri: str


class TotpConfirm(BaseModel):
    code: str = Field(min_length=6, max_length=10)


class RecoveryCodes(BaseModel):
    recovery_codes: list[str]


def _refuse(exc: AuthError) -> NoReturn:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    if exc.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    raise HTTPException(exc.status, {"code": exc.code, "detail": exc.detail}, headers) from exc


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/login", response_model=TokenResponse)
async def login(
    body: LoginRequest, request: Request, state: State, _auth: PublicAccess
) -> TokenResponse:
    """Exchange a password (and a TOTP or recovery code when enabled) for tokens.

    Rate limited per client address; failed logins lock one account from one address, and a
    spray from many addresses holds the account to addresses its owner used before (429 with
    ``Retry-After``, alike for names that do not exist)."""
    try:
        await enforce(state.limiter, login_ip_rule(state.settings), _source(request) or "unknown")
    except RateLimited as exc:
        raise HTTPException(429, exc.body, {"Retry-After": exc.retry_after_header}) from exc
    try:
        pair = await state.auth.login(
            body.username, body.password, body.totp_code, body.recovery_code, _source(request)
        )
    except AuthError as exc:
        _refuse(exc)
    return TokenResponse.of(pair)


@router.post("/refresh", response_model=TokenResponse)
async def refresh(
    body: RefreshRequest, request: Request, state: State, _auth: PublicAccess
) -> TokenResponse:
    """Rotate a refresh token: the old one stops working; presenting it again revokes them all."""
    try:
        pair = await state.auth.refresh(body.refresh_token, _source(request))
    except AuthError as exc:
        _refuse(exc)
    return TokenResponse.of(pair)


@router.post("/logout", status_code=204)
async def logout(body: RefreshRequest, request: Request, state: State, _auth: PublicAccess) -> None:
    """Revoke the refresh token and every token rotated from the same login."""
    try:
        await state.auth.logout(body.refresh_token, _source(request))
    except AuthError as exc:
        _refuse(exc)


@router.get("/me", response_model=Me)
async def me(who: UserAuth) -> Me:
    return Me(username=who.name, role=who.role, facilities=who.facilities, scope=who.scope)


@router.post("/totp/enroll", response_model=TotpEnrollment)
async def totp_enroll(state: State, who: UserAuth) -> TotpEnrollment:
    """Start TOTP enrollment: show the provisioning URI as a QR code, then confirm a code."""
    try:
        return TotpEnrollment(provisioning_uri=await state.auth.enroll_totp(who.name))
    except AuthError as exc:
        _refuse(exc)


@router.post("/totp/confirm", response_model=RecoveryCodes)
async def totp_confirm(body: TotpConfirm, state: State, who: UserAuth) -> RecoveryCodes:
    """Turn TOTP on with a first code; the recovery codes are shown this once."""
    try:
        return RecoveryCodes(recovery_codes=await state.auth.confirm_totp(who.name, body.code))
    except AuthError as exc:
        _refuse(exc)
