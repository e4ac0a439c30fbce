"""A tus 1.0 client over httpx for the agent's segments.

Every PATCH carries an ``Upload-Checksum`` (sha256), so the hub keeps no damaged bytes; after any
failure the caller asks HEAD for the offset and goes on from there (``UploadSession``).
Errors are translated at this boundary into the project's tree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx

from relaypacs_agent.uplink.client import HubRefused, HubUnavailable
from relaypacs_shared.errors import ChecksumMismatch, OffsetConflict, UnknownUpload
from relaypacs_shared.netopts import tcp_loss
from relaypacs_shared.tus import (
    OFFSET_CONTENT_TYPE,
    STATUS_CHECKSUM_MISMATCH,
    TUS_VERSION,
    encode_metadata,
    format_checksum,
)

ENDPOINT = "/api/v1/uploads"
# A slow link still moves bytes every few seconds; a connection with no progress for WRITE_STALL
# seconds is dead (RTO backoff under heavy loss), and a fresh one recovers faster.
WRITE_STALL = 20.0
PATCH_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=WRITE_STALL, pool=10.0)


class TusClient:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        # Share of data segments TCP had to send again on the upload connections (TCP_INFO),
        # smoothed over PATCHes; None until measured (or where the kernel does not tell).
        self.loss: float | None = None
        self._lock = threading.Lock()

    def _observe(self, resp: httpx.Response) -> None:
        stream = resp.extensions.get("network_stream")
        got = tcp_loss(stream.get_extra_info("socket")) if stream is not None else None
        if got is None:
            return
        with self._lock:
            self.loss = got[0] if self.loss is None else 0.7 * self.loss + 0.3 * got[0]

    def _request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        headers = {"Tus-Resumable": TUS_VERSION, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        try:
            resp = self.http.request(method, url, headers=headers, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise HubUnavailable(f"hub unreachable: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            # 429: the hub's upload rate limit; like an outage, retried later, never a refusal.
            raise HubUnavailable(f"hub answered {resp.status_code}")
        return resp

    def create(self, length: int, metadata: dict[str, str], *, partial: bool = False) -> str:
        headers = {"Upload-Length": str(length), "Upload-Metadata": encode_metadata(metadata)}
        if partial:
            headers["Upload-Concat"] = "partial"
        resp = self._request("POST", ENDPOINT, headers=headers)
        if resp.status_code != 201 or "location" not in resp.headers:
            raise HubRefused(resp.status_code, "tus_create", resp.text[:200])
        location = resp.headers["location"]
        return location if location.startswith("/") else httpx.URL(location).path

    def create_final(self, part_urls: list[str], metadata: dict[str, str]) -> str:
        """Concatenate finished partial uploads (tus concatenation); the hub unpacks the result."""
        resp = self._request(
            "POST",
            ENDPOINT,
            timeout=httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=10.0),
            headers={
                "Upload-Concat": "final;" + " ".join(part_urls),
                "Upload-Metadata": encode_metadata(metadata),
            },
        )
        if resp.status_code in (400, 404, 410):
            raise UnknownUpload(f"the hub refused the concatenation: {resp.text[:200]}")
        if resp.status_code != 201 or "location" not in resp.headers:
            raise HubRefused(resp.status_code, "tus_concat", resp.text[:200])
        location = resp.headers["location"]
        return location if location.startswith("/") else httpx.URL(location).path

    def head(self, url: str) -> int:
        resp = self._request("HEAD", url)
        if resp.status_code in (404, 410):
            raise UnknownUpload(f"the hub no longer has upload {url} ({resp.status_code})")
        if resp.status_code != 200 or "upload-offset" not in resp.headers:
            raise HubRefused(resp.status_code, "tus_head", "HEAD without Upload-Offset")
        return int(resp.headers["upload-offset"])

    def patch(
        self, url: str, offset: int, data: bytes, pace: Callable[[int], None] | None = None
    ) -> int:
        def body() -> Iterator[bytes]:
            view = memoryview(data)
            step = 64 * 1024
            for i in range(0, len(view), step):
                piece = bytes(view[i : i + step])
                if pace:
                    pace(len(piece))
                yield piece

        resp = self._request(
            "PATCH",
            url,
            timeout=PATCH_TIMEOUT,
            content=body() if pace else data,
            headers={
                "Content-Type": OFFSET_CONTENT_TYPE,
                "Upload-Offset": str(offset),
                "Upload-Checksum": format_checksum("sha256", data),
                "Content-Length": str(len(data)),
            },
        )
        self._observe(resp)
        if resp.status_code == 204:
            return int(resp.headers["upload-offset"])
        if resp.status_code == 409:
            raise OffsetConflict("the hub holds another offset for this upload")
        if resp.status_code == STATUS_CHECKSUM_MISMATCH:
            raise ChecksumMismatch("the hub received damaged bytes for this PATCH")
        if resp.status_code in (404, 410):
            raise UnknownUpload(f"the hub no longer has upload {url} ({resp.status_code})")
        raise HubRefused(resp.status_code, "tus_patch", resp.text[:200])

    def delete(self, url: str) -> None:
        self._request("DELETE", url)
