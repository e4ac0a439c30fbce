"""HTTP client for the hub's agent API (httpx + tenacity).

Each attempt re-opens the spool file, so a retried upload always sends the whole body (the trap
of retrying a half-consumed body generator is documented in DESIGN.md). Only errors that may pass
are retried here; the sender's loop retries whole studies later with a capped backoff.
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from relaypacs_agent.uplink.credential import CredentialAuth
from relaypacs_shared.errors import ChecksumMismatch, ProtocolError, RelayError, Transient
from relaypacs_shared.netopts import SocketOption, supported_options
from relaypacs_shared.wire import (
    CommitRequest,
    InstanceReceipt,
    ManifestAnswer,
    StudyStatus,
    format_content_digest,
)


class HubUnavailable(RelayError, Transient):
    """The hub could not be reached, timed out, or answered 5xx."""


class HubRefused(ProtocolError):
    """The hub answered 4xx: retrying the same request will not help."""

    def __init__(self, status: int, code: str, detail: str, missing: list[str] | None = None):
        super().__init__(f"hub refused ({status} {code}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.missing = missing or []


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, HubUnavailable)


# A manifest not answered after this long is sent again on a second connection (_send_hedged).
MANIFEST_HEDGE_SECONDS = 2.0

_retry = retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(4),
    wait=wait_exponential_jitter(multiplier=0.5, max=8),
    reraise=True,
)


def _file_chunks(path: Path, chunk: int = 256 * 1024) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(chunk):
            yield block


def hub_ssl_context(ca_file: Path | None = None) -> ssl.SSLContext | bool:
    """Verification of the hub's certificate: the given CA bundle, else ``True`` (httpx's
    default verification against certifi's trust store). Never off."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    return True


class HubClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        ca_file: Path | None = None,
        credential_file: Path | None = None,
        socket_options: list[SocketOption] | None = None,
    ) -> None:
        # The enrolled device credential when ``credential_file`` exists (re-read when renewed),
        # else the legacy agent ``token``.
        headers = {"User-Agent": "relaypacs-agent/0.1"}
        verify = hub_ssl_context(ca_file)
        if transport is None:
            # Bounded TCP retransmission backoff for lossy links (relaypacs_shared.netopts).
            options = supported_options() if socket_options is None else socket_options
            # Keep connections for a minute (the hub keeps them 75 s): a new one costs a
            # handshake, which a lossy link makes slow. Room for every parallel stream of a
            # lossy link (transfer.MAX_STREAMS) and the report feed, heartbeat and status.
            transport = httpx.HTTPTransport(
                verify=verify,
                socket_options=options,
                limits=httpx.Limits(
                    max_connections=128, max_keepalive_connections=64, keepalive_expiry=60.0
                ),
            )
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            auth=CredentialAuth(credential_file, token),
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            verify=verify,
        )
        # When the hub last answered anything (the heartbeat reports it): Unix time, or None.
        self.last_contact: float | None = None

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise HubUnavailable(f"hub unreachable: {type(exc).__name__}: {exc}") from exc
        self.last_contact = time.time()
        if resp.status_code >= 500:
            raise HubUnavailable(f"hub answered {resp.status_code}")
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {}
            code = str(body.get("code", "error"))
            detail = str(body.get("detail", resp.text[:200]))
            if code == "checksum_mismatch":
                raise ChecksumMismatch(detail)
            raise HubRefused(resp.status_code, code, detail, body.get("missing"))
        return resp

    def _send_hedged(self, method: str, url: str, *, after: float, **kwargs: Any) -> httpx.Response:
        """Send; with no answer after ``after`` seconds, send the same request again on another
        connection and take the first answer. On a link that loses packets both ways a single
        small request sometimes waits out several retransmission timeouts (5-10 s at 30% loss)
        while a second connection gets through at once. Only for requests the hub answers
        alike when they arrive twice (the manifest)."""
        answers: queue.Queue[tuple[httpx.Response | None, BaseException | None]] = queue.Queue()

        def attempt() -> None:
            try:
                answers.put((self._send(method, url, **kwargs), None))
            except BaseException as exc:  # handed to the caller below
                answers.put((None, exc))

        threading.Thread(target=attempt, name="hub-request", daemon=True).start()
        sent = 1
        try:
            resp, error = answers.get(timeout=after)
        except queue.Empty:
            threading.Thread(target=attempt, name="hub-request-again", daemon=True).start()
            sent = 2
            resp, error = answers.get()
        if resp is None and sent == 2 and isinstance(error, HubUnavailable):
            resp, _ = answers.get()  # the first copy failed on the link: the second may not
        if resp is None:
            assert error is not None
            raise error
        return resp

    @_retry
    def put_instance(
        self, study_uid: str, sop_uid: str, path: Path, sha256: str, size: int
    ) -> InstanceReceipt:
        resp = self._send(
            "PUT",
            f"/api/v1/studies/{study_uid}/instances/{sop_uid}",
            content=_file_chunks(path),
            headers={
                "Content-Type": "application/dicom",
                "Content-Digest": format_content_digest(sha256),
                "Content-Length": str(size),
            },
        )
        return InstanceReceipt.model_validate(resp.json())

    @_retry
    def commit(self, study_uid: str, request: CommitRequest) -> StudyStatus:
        resp = self._send(
            "POST", f"/api/v1/studies/{study_uid}/commit", json=request.model_dump(mode="json")
        )
        return StudyStatus.model_validate(resp.json())

    @_retry
    def manifest(
        self, study_uid: str, service_level: str, instances: list[dict[str, object]]
    ) -> ManifestAnswer:
        """Declare the study's instances; the hub answers which it still lacks."""
        resp = self._send_hedged(
            "POST",
            f"/api/v1/studies/{study_uid}/manifest",
            after=MANIFEST_HEDGE_SECONDS,
            json={"service_level": service_level, "instances": instances},
        )
        return ManifestAnswer.model_validate(resp.json())

    @_retry
    def study_status(self, study_uid: str) -> StudyStatus:
        resp = self._send("GET", f"/api/v1/studies/{study_uid}")
        return StudyStatus.model_validate(resp.json())

    def report_feed(self, after: int, wait: float) -> dict[str, Any]:
        """The facility's report events after ``after`` (long poll up to ``wait`` seconds)."""
        resp = self._send(
            "GET",
            "/api/v1/reports/feed",
            params={"after": after, "wait": wait},
            timeout=httpx.Timeout(wait + 30.0, connect=10.0),
        )
        body: dict[str, Any] = resp.json()
        return body

    def report_document(self, report_id: int) -> bytes:
        """The PDF of a report."""
        return self._send("GET", f"/api/v1/reports/{report_id}/content").content

    def push_key(self) -> str:
        """The hub's VAPID public key (the browser's applicationServerKey)."""
        return str(self._send("GET", "/api/v1/push/key").json()["public_key"])

    def push_subscribe(self, subscription: dict[str, Any], username: str) -> None:
        """Relay a browser's push subscription for this facility."""
        self._send(
            "POST", "/api/v1/push/subscriptions", json={**subscription, "username": username}
        )

    def verifiers(self) -> dict[str, Any]:
        """The login verifiers of this agent's facility (for LAN login with the WAN down)."""
        resp = self._send("GET", "/api/v1/devices/verifiers")
        body: dict[str, Any] = resp.json()
        return body

    def claim_totp_step(self, username: str, step: int) -> bool:
        """Tell the hub a TOTP code of this time step was just used here; False if it (or a
        later one) was used already, at the hub or at another agent."""
        resp = self._send(
            "POST", "/api/v1/devices/totp-steps", json={"username": username, "step": step}
        )
        return bool(resp.json().get("accepted"))

    def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        """Post the agent's health; the hub keeps the latest and exports it."""
        resp = self._send("POST", "/api/v1/devices/heartbeat", json=body)
        answer: dict[str, Any] = resp.json()
        return answer

    def healthy(self) -> bool:
        try:
            return self._send("GET", "/healthz").status_code == 200
        except RelayError:
            return False
