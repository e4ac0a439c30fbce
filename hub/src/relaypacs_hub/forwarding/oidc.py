"""Bearer tokens by the OAuth 2.0 client credentials grant (RFC 6749 section 4.4).

This is how a service talks to a dcm4chee-arc secured with Keycloak: the hub is registered as a
confidential client with service-account roles, and asks the realm's token endpoint::

    POST https://<keycloak>:8843/realms/dcm4che/protocol/openid-connect/token
    Content-Type: application/x-www-form-urlencoded

    grant_type=client_credentials&client_id=<id>&client_secret=<secret>

    200 {"access_token": "eyJ...", "expires_in": 300, "token_type": "Bearer", ...}

The token is cached until shortly before ``expires_in`` runs out, shared by every request of the
destination, and fetched again when the archive answers 401 (a token revoked or expired early).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable

import httpx

from relaypacs_hub.forwarding.config import OidcClientCredentials
from relaypacs_shared.errors import DestinationError, TransientDestinationError

# Refresh this long before the provider's expiry, so a token never dies in flight.
EXPIRY_MARGIN_SECONDS = 30.0


class ClientCredentialsTokens:
    def __init__(
        self,
        config: OidcClientCredentials,
        *,
        timeout_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds),
            verify=config.verify_tls,
            transport=transport,
            follow_redirects=False,
        )
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the archive refused it); a newer one already fetched is kept."""
        if self._token == token:
            self._token = None

    async def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret.get_secret_value(),
        }
        if self.config.scope:
            form["scope"] = self.config.scope
        url = self.config.token_url
        try:
            response = await self._client.post(
                url, data=form, headers={"Accept": "application/json"}
            )
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise TransientDestinationError(
                f"token endpoint {url} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise DestinationError(f"token endpoint {url} failed: {exc}") from exc
        self.fetches += 1
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientDestinationError(f"token endpoint answered HTTP {response.status_code}")
        try:
            body = json.loads(response.content)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            # RFC 6749 5.2: {"error": "invalid_client", "error_description": "..."}; a wrong
            # secret does not heal by retrying, so this is not transient.
            error = body.get("error") if isinstance(body, dict) else None
            described = body.get("error_description") if isinstance(body, dict) else None
            raise DestinationError(
                f"token endpoint refused the client credentials: HTTP {response.status_code}"
                + (f" {error}" if error else "")
                + (f": {described}" if described else "")
            )
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise DestinationError("token endpoint answered without an access_token")
        token_type = str(body.get("token_type", "Bearer"))
        if token_type.lower() != "bearer":
            raise DestinationError(f"token endpoint issued a {token_type!r} token, not Bearer")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 60.0
        self._token = token
        self._expires_at = self._clock() + max(lifetime - EXPIRY_MARGIN_SECONDS, lifetime / 2)

    async def aclose(self) -> None:
        await self._client.aclose()


class BearerFromTokens(httpx.Auth):
    """httpx authentication that puts the current token on every request."""

    def __init__(self, tokens: ClientCredentialsTokens) -> None:
        self.tokens = tokens

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self.tokens.token()}"
        yield request
