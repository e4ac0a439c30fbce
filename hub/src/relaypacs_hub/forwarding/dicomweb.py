"""DICOMweb destination: STOW-RS to send, QIDO-RS to confirm.

Speaks HTTP with httpx directly instead of through dicomweb-client: that library sends large bodies
chunked and its built-in retry re-sends a half-consumed body generator, so an archive such as
Orthanc stores only the tail it could parse and still answers 200 (see DESIGN.md, "Known traps").
Here each batch's body is streamed from the object store with an exact Content-Length (so only a
chunk of one instance is in memory, and the body is never chunked); a body is rebuilt from the
store for any second send, never resumed. Nothing else is retried at this level (the hub's job
queue retries whole deliveries, and a duplicate instance is a success at the archive).

Profiles set the URL layout and the archive's quirks: ``orthanc`` (``<url>/dicom-web``) and
``dcm4chee-arc`` (``<url>/dcm4chee-arc/aets/<AET>/rs``, its own Failure Reasons, a 404 for an
unknown AE title, bearer tokens from Keycloak by client credentials: see ``oidc.py``).

The STOW-RS response is read per instance, as PS3.18 section 10.5.3 describes it:

- Referenced SOP Sequence (0008,1199): stored; each item names its Referenced SOP Instance UID
  (0008,1155).
- Failed SOP Sequence (0008,1198): refused, with a Failure Reason (0008,1197).
- An instance sent but named in neither sequence was not stored. Orthanc 1.10 answers 200 with
  both sequences empty when it could not split the multipart body, and leaves out a part it
  cannot parse as DICOM (400), so silence is a failure, never a success.

HTTP status only decides whether the body is worth reading: 200, 202, 400 and 409 (and any other
4xx with a readable STOW-RS body) are read per instance; 5xx, 408, 429, timeouts and connection
errors raise ``TransientDestinationError``; an unreadable body raises ``DestinationError``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from relaypacs_hub.forwarding.base import (
    BatchCallback,
    DeliveryResult,
    OutgoingInstance,
    batch_callback,
)
from relaypacs_hub.forwarding.config import DicomWebDestinationConfig
from relaypacs_hub.forwarding.oidc import BearerFromTokens, ClientCredentialsTokens
from relaypacs_shared.dicom_status import describe_failure_reason
from relaypacs_shared.errors import (
    DestinationError,
    RoutingError,
    StorageError,
    TransientDestinationError,
)

log = structlog.get_logger(__name__)

# DICOM JSON keys (PS3.18 annex F) of the Store Instances Response Module (PS3.18 10.5.3).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
SOP_INSTANCE_UID = "00080018"

NOT_ACKNOWLEDGED = "archive did not acknowledge the instance"

# 0x0111: the archive already holds an instance with this UID. The Destination protocol counts
# an instance the archive already had as delivered; confirm() checks presence afterwards.
ALREADY_HELD_REASONS = frozenset({0x0111})

# Statuses a retry may cure, besides every 5xx.
_TRANSIENT_STATUSES = frozenset({408, 425, 429})

QIDO_PAGE_SIZE = 1000
_QIDO_MAX_PAGES = 10_000
_EXCERPT_CHARS = 200


# -- STOW-RS response ------------------------------------------------------------------------


@dataclass
class StoreResponse:
    """What a STOW-RS response body says, instance by instance."""

    referenced: set[str] = field(default_factory=set)
    failed: dict[str, int | None] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)


class UnreadableStoreResponse(ValueError):
    """The body is not a DICOM JSON Store Instances Response."""


def parse_store_response(body: bytes) -> StoreResponse:
    """Read a DICOM JSON Store Instances Response (PS3.18 10.5.3).

    Raises ``UnreadableStoreResponse`` when the body is not JSON, or is JSON without either
    sequence (an error page from the archive or a proxy, for instance).
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableStoreResponse(f"not JSON: {exc}") from exc
    if isinstance(data, list) and len(data) == 1:
        data = data[0]  # some archives wrap the single response data set in an array
    if not isinstance(data, dict) or not (
        FAILED_SOP_SEQUENCE in data or REFERENCED_SOP_SEQUENCE in data
    ):
        raise UnreadableStoreResponse("no Referenced SOP Sequence nor Failed SOP Sequence")

    response = StoreResponse()
    for item in _sequence_items(data, REFERENCED_SOP_SEQUENCE):
        uid = _first_str(item, REFERENCED_SOP_INSTANCE_UID)
        if uid is None:
            continue
        response.referenced.add(uid)
        warning = _first_int(item, WARNING_REASON)
        if warning is not None:
            response.warnings[uid] = warning
    for item in _sequence_items(data, FAILED_SOP_SEQUENCE):
        uid = _first_str(item, REFERENCED_SOP_INSTANCE_UID)
        if uid is not None:
            response.failed[uid] = _first_int(item, FAILURE_REASON)
    return response


def classify(
    sent_uids: Sequence[str], response: StoreResponse, profile: str = "generic"
) -> DeliveryResult:
    """Per sent instance: delivered, or failed with a reason in plain words.

    A failure wins over a reference to the same instance (a retry costs less than a lost
    instance), except "already held", which the protocol counts as delivered.
    """
    result = DeliveryResult()
    for uid in sent_uids:
        if uid in response.failed:
            code = response.failed[uid]
            if code in ALREADY_HELD_REASONS:
                result.delivered.add(uid)
            else:
                result.failed[uid] = describe_failure_reason(code, profile)
        elif uid in response.referenced:
            result.delivered.add(uid)
        else:
            result.failed[uid] = NOT_ACKNOWLEDGED
    return result


def interpret_store_response(
    status_code: int, body: bytes, sent_uids: Sequence[str], profile: str = "generic"
) -> DeliveryResult:
    """Turn one STOW-RS answer into per-instance outcomes, or raise for the whole request.

    Orthanc 1.10 (DICOMweb plugin 1.7) answers 200 when it stored everything it understood, 400
    when a part was not DICOM (the others are stored and listed), 409 when an instance belongs
    to another study than the one in the URL, and 200 with both sequences empty when it could
    not split the body at all. dcm4chee-arc answers 200 when every instance was stored, 202
    when some failed, 409 when none was stored (its StowRS resource), with its own Failure
    Reasons (0xA770-0xA779) and the last error in a ``Warning`` header.
    """
    if status_code >= 500 or status_code in _TRANSIENT_STATUSES:
        raise TransientDestinationError(
            f"archive answered HTTP {status_code} to STOW-RS: {excerpt(body)}"
        )
    if not (200 <= status_code < 300 or 400 <= status_code < 500):
        raise DestinationError(f"archive answered HTTP {status_code} to STOW-RS: {excerpt(body)}")
    try:
        response = parse_store_response(body)
    except UnreadableStoreResponse as exc:
        raise DestinationError(
            f"archive answered HTTP {status_code} to STOW-RS with an unreadable body ({exc}):"
            f" {excerpt(body)}"
        ) from exc
    return classify(sent_uids, response, profile)


# -- STOW-RS request -------------------------------------------------------------------------


def plan_batches(
    instances: Sequence[OutgoingInstance], max_instances: int, max_bytes: int
) -> Iterator[list[OutgoingInstance]]:
    """Consecutive batches of at most ``max_instances`` and ``max_bytes`` (declared sizes).

    An instance larger than ``max_bytes`` travels alone.
    """
    batch: list[OutgoingInstance] = []
    batch_bytes = 0
    for instance in instances:
        if batch and (len(batch) >= max_instances or batch_bytes + instance.size > max_bytes):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(instance)
        batch_bytes += instance.size
    if batch:
        yield batch


_PART_HEAD = b"\r\nContent-Type: application/dicom\r\n\r\n"


def _new_boundary() -> tuple[str, bytes]:
    boundary = f"relaypacs-{secrets.token_hex(16)}"
    return boundary, b"--" + boundary.encode("ascii")


def _content_type(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def build_multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts, and its Content-Type header value.

    The boundary is random and checked against the payload: a boundary that occurs inside an
    instance would cut it, and Orthanc would silently store less than was sent.
    """
    while True:
        boundary, delimiter = _new_boundary()
        if not any(delimiter in part for part in parts):
            break
    chunks: list[bytes] = []
    for part in parts:
        chunks += [delimiter, _PART_HEAD, part, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    return b"".join(chunks), _content_type(boundary)


class BoundaryCollision(TransientDestinationError):
    """The random boundary occurred inside an instance (about 2**-128): send again."""


class StreamedMultipart:
    """A multipart/related body streamed from the object store, with its exact length.

    The length is known from the recorded instance sizes, so the request goes out with a
    Content-Length (never chunked), and only one chunk of one instance is in memory at a time.
    Each instance is checked as it streams: the boundary must not occur in it (checked across
    chunk seams too; a collision aborts the request, and the retry draws a new boundary), and its
    byte count must equal its recorded size (else the object store returned other bytes).
    """

    def __init__(self, instances: Sequence[OutgoingInstance]) -> None:
        if any(i.stream is None for i in instances):
            raise ValueError("every instance needs a stream")
        self.instances = list(instances)
        self.boundary, self._delimiter = _new_boundary()
        head = len(self._delimiter) + len(_PART_HEAD)
        self.length = sum(head + i.size + 2 for i in self.instances) + len(self._delimiter) + 4

    @property
    def content_type(self) -> str:
        return _content_type(self.boundary)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        delimiter = self._delimiter
        seam = len(delimiter) - 1
        for inst in self.instances:
            yield delimiter + _PART_HEAD
            assert inst.stream is not None
            sent = 0
            tail = b""
            async for chunk in inst.stream():
                if delimiter in chunk or delimiter in tail + chunk[:seam]:
                    raise BoundaryCollision("multipart boundary occurred inside an instance")
                tail = chunk[-seam:]
                sent += len(chunk)
                if sent > inst.size:
                    break
                yield chunk
            if sent != inst.size:
                raise StorageError(
                    f"object store returned {sent} bytes for {inst.sop_instance_uid},"
                    f" {inst.size} were recorded"
                )
            yield b"\r\n"
        yield delimiter + b"--\r\n"


# -- the destination -------------------------------------------------------------------------


def excerpt(body: bytes, limit: int = _EXCERPT_CHARS) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())
    if not text:
        return "(empty body)"
    return text if len(text) <= limit else text[:limit] + "..."


def _build_auth(
    config: DicomWebDestinationConfig, tokens: ClientCredentialsTokens | None
) -> tuple[httpx.Auth | None, dict[str, str]]:
    schemes = [
        name
        for name, on in (
            ("username/password", config.username is not None),
            ("bearer_token", config.bearer_token is not None),
            ("oidc", config.oidc is not None),
        )
        if on
    ]
    if len(schemes) > 1:
        raise RoutingError(
            f"destination {config.name!r}: configure only one of {', '.join(schemes)}"
        )
    if tokens is not None:
        return BearerFromTokens(tokens), {}
    if config.bearer_token is not None:
        return None, {"Authorization": f"Bearer {config.bearer_token.get_secret_value()}"}
    if config.username is not None:
        password = config.password.get_secret_value() if config.password is not None else ""
        return httpx.BasicAuth(config.username, password), {}
    if config.password is not None:
        raise RoutingError(f"destination {config.name!r}: password given without username")
    return None, {}


Body = Callable[[], tuple[Any, dict[str, str]]]


class DicomWebDestination:
    """Deliver to a DICOMweb archive (Orthanc, dcm4chee-arc, ...) by STOW-RS, confirm by QIDO-RS.

    ``transport`` is for tests (``httpx.MockTransport``); production uses httpx's default.
    """

    def __init__(
        self,
        config: DicomWebDestinationConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        token_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.profile = config.profile
        self.base_url = config.service_url
        self.tokens = (
            ClientCredentialsTokens(
                config.oidc, timeout_seconds=config.timeout_seconds, transport=token_transport
            )
            if config.oidc is not None
            else None
        )
        auth, headers = _build_auth(config, self.tokens)
        self._client = httpx.AsyncClient(
            auth=auth,
            headers=headers,
            timeout=httpx.Timeout(config.timeout_seconds),
            verify=config.verify_tls,
            follow_redirects=False,
            transport=transport,
        )

    async def deliver(
        self,
        study_instance_uid: str,
        instances: Sequence[OutgoingInstance],
        on_batch: BatchCallback | None = None,
    ) -> DeliveryResult:
        go_on = batch_callback(on_batch)
        result = DeliveryResult()
        bound = log.bind(destination=self.name, study_uid=study_instance_uid)
        waiting = deque(
            plan_batches(instances, self.config.max_batch_instances, self.config.max_batch_bytes)
        )
        # Streamed bodies may overlap (the archive stores one batch while the next is on the
        # wire); bodies built in memory go one at a time, to bound memory.
        streamed = all(i.stream is not None for i in instances)
        parallel = self.config.max_parallel_requests if streamed else 1
        in_flight: set[asyncio.Task[DeliveryResult]] = set()
        stop = False
        try:
            while (waiting and not stop) or in_flight:
                while waiting and not stop and len(in_flight) < parallel:
                    in_flight.add(asyncio.create_task(self._store_batch(waiting.popleft())))
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                errors = [t.exception() for t in done if t.exception() is not None]
                for task in done:
                    if task.exception() is not None:
                        continue
                    outcome = task.result()
                    result.merge(outcome)
                    bound.debug(
                        "stow_batch",
                        instances=len(outcome.delivered) + len(outcome.failed),
                        delivered=len(outcome.delivered),
                        failed=len(outcome.failed),
                    )
                    # Progress is recorded as each batch is answered; a "stop" takes effect
                    # before the next batch is sent (those already on the wire finish).
                    if not await go_on(outcome):
                        stop = True
                if errors:
                    raise errors[0]  # type: ignore[misc]
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        result.stopped = stop and bool(waiting)
        return result

    async def _store_batch(self, batch: Sequence[OutgoingInstance]) -> DeliveryResult:
        sent_uids = [i.sop_instance_uid for i in batch]
        url = f"{self.base_url}/studies"
        if all(i.stream is not None for i in batch):

            def body() -> tuple[Any, dict[str, str]]:
                stream = StreamedMultipart(batch)
                return stream, {
                    "Content-Type": stream.content_type,
                    "Content-Length": str(stream.length),
                }

        else:
            parts = await asyncio.gather(*(i.read() for i in batch))
            content, content_type = build_multipart(parts)
            del parts

            def body() -> tuple[Any, dict[str, str]]:
                return content, {"Content-Type": content_type}

        response = await self._request(
            "POST", url, body=body, headers={"Accept": "application/dicom+json"}
        )
        outcome = interpret_store_response(
            response.status_code, response.content, sent_uids, self.profile
        )
        if outcome.failed:
            warning = response.headers.get("warning")
            if warning:
                # dcm4chee-arc puts the archive's own words (Error Comment) in a Warning header.
                note = f"; archive says: {excerpt(warning.encode(), 160)}"
                outcome.failed = {
                    uid: reason + (note if reason != NOT_ACKNOWLEDGED else "")
                    for uid, reason in outcome.failed.items()
                }
            log.warning(
                "stow_instances_refused",
                destination=self.name,
                status=response.status_code,
                refused=len(outcome.failed),
                reasons=sorted(set(outcome.failed.values()))[:5],
            )
        return outcome

    async def confirm(self, study_instance_uid: str, sop_instance_uids: Sequence[str]) -> set[str]:
        wanted = set(sop_instance_uids)
        if not wanted:
            return set()
        held: set[str] = set()
        url = f"{self.base_url}/studies/{study_instance_uid}/instances"
        offset = 0
        for _ in range(_QIDO_MAX_PAGES):
            page = await self._qido_page(url, offset)
            page_uids = set(page)
            # An empty page is the end; a page with nothing new means the archive ignores offset.
            if not page_uids or page_uids <= held:
                break
            held |= page_uids
            if wanted <= held:
                break
            offset += len(page)
        return held & wanted

    async def probe(self) -> str:
        response = await self._request(
            "GET",
            f"{self.base_url}/studies",
            params={"limit": "1"},
            headers={"Accept": "application/dicom+json"},
        )
        if response.status_code in (200, 204):
            return f"QIDO-RS answered HTTP {response.status_code}"
        error = (
            TransientDestinationError
            if response.status_code >= 500 or response.status_code in _TRANSIENT_STATUSES
            else DestinationError
        )
        raise error(f"QIDO-RS answered HTTP {response.status_code}: {excerpt(response.content)}")

    async def _qido_page(self, url: str, offset: int) -> list[str]:
        data = await self._qido_json(url, {"limit": str(QIDO_PAGE_SIZE), "offset": str(offset)})
        uids = [_first_str(item, SOP_INSTANCE_UID) for item in data]
        return [uid for uid in uids if uid is not None]

    async def search_instances(self, study_instance_uid: str) -> list[tuple[str, str, str]]:
        """(series, SOP instance, SOP class) UIDs of every instance the archive holds for the
        study, by QIDO-RS (report discovery)."""
        url = f"{self.base_url}/studies/{study_instance_uid}/instances"
        found: dict[str, tuple[str, str, str]] = {}
        offset = 0
        for _ in range(_QIDO_MAX_PAGES):
            page = await self._qido_json(
                url,
                {
                    "limit": str(QIDO_PAGE_SIZE),
                    "offset": str(offset),
                    "includefield": "00080016,0020000E",
                },
            )
            fresh = 0
            for item in page:
                sop = _first_str(item, SOP_INSTANCE_UID)
                series = _first_str(item, "0020000E")
                sop_class = _first_str(item, "00080016")
                if sop and series and sop_class and sop not in found:
                    found[sop] = (series, sop, sop_class)
                    fresh += 1
            if not page or not fresh:
                break
            offset += len(page)
        return list(found.values())

    async def retrieve_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> bytes:
        """One instance as DICOM Part 10 bytes, by WADO-RS."""
        url = (
            f"{self.base_url}/studies/{study_instance_uid}/series/{series_instance_uid}"
            f"/instances/{sop_instance_uid}"
        )
        response = await self._request(
            "GET", url, headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        if response.status_code != 200:
            error = (
                TransientDestinationError
                if response.status_code >= 500 or response.status_code in _TRANSIENT_STATUSES
                else DestinationError
            )
            raise error(
                f"archive answered HTTP {response.status_code} to WADO-RS:"
                f" {excerpt(response.content)}"
            )
        return first_multipart_part(response.headers.get("content-type", ""), response.content)

    async def orthanc_changes(self, since: int | None) -> tuple[list[str], int]:
        """Orthanc only (profile ``orthanc``): Study Instance UIDs of studies that got a new
        instance after change ``since`` (None: start at the latest change), and the new cursor.
        A cheaper signal than a QIDO-RS poll: ask QIDO-RS only about those."""
        root = self.base_url.removesuffix("/dicom-web")
        params = {"last": ""} if since is None else {"since": str(since), "limit": "200"}
        response = await self._request("GET", f"{root}/changes", params=params)
        if response.status_code != 200:
            raise TransientDestinationError(
                f"Orthanc answered HTTP {response.status_code} to /changes"
            )
        try:
            body = json.loads(response.content)
            last = int(body["Last"])
            changes = body.get("Changes") or []
        except (ValueError, KeyError, TypeError) as exc:
            raise DestinationError("Orthanc answered /changes with an unreadable body") from exc
        if since is None:
            return [], last
        studies: list[str] = []
        for change in changes:
            if change.get("ChangeType") != "NewInstance":
                continue
            answer = await self._request(
                "GET", f"{root}/instances/{change.get('ID')}/tags", params={"simplify": ""}
            )
            if answer.status_code == 200:
                uid = json.loads(answer.content).get("StudyInstanceUID")
                if isinstance(uid, str) and uid not in studies:
                    studies.append(uid)
        return studies, last

    async def _qido_json(self, url: str, params: Mapping[str, str]) -> list[Mapping[str, Any]]:
        response = await self._request(
            "GET", url, params=dict(params), headers={"Accept": "application/dicom+json"}
        )
        status = response.status_code
        if status == 404 and self.profile == "dcm4chee-arc" and response.content.strip():
            # dcm4chee-arc answers an unknown AE title with 404 {"errorMessage": ...}; an empty
            # result is 200 [] or 204. Taking this 404 for "none held" would hide a bad config.
            raise DestinationError(
                f"archive answered HTTP 404 to QIDO-RS: {excerpt(response.content)}"
            )
        if status in (204, 404):
            return []
        if status >= 500 or status in _TRANSIENT_STATUSES:
            raise TransientDestinationError(
                f"archive answered HTTP {status} to QIDO-RS: {excerpt(response.content)}"
            )
        if status != 200:
            raise DestinationError(
                f"archive answered HTTP {status} to QIDO-RS: {excerpt(response.content)}"
            )
        if not response.content.strip():
            return []
        try:
            data = json.loads(response.content)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DestinationError(
                f"archive answered QIDO-RS with a body that is not DICOM JSON:"
                f" {excerpt(response.content)}"
            ) from exc
        if not isinstance(data, list):
            raise DestinationError(
                f"archive answered QIDO-RS with a body that is not a list of data sets:"
                f" {excerpt(response.content)}"
            )
        return [item for item in data if isinstance(item, dict)]

    async def _request(
        self, method: str, url: str, *, body: Body | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request; with OIDC, a 401 fetches a new token and sends once more.

        ``body`` builds the request body afresh for each send: a streamed body is never
        re-sent half consumed (the dicomweb-client trap in DESIGN.md).
        """
        for attempt in (1, 2):
            headers = dict(kwargs.pop("headers", {}) or {})
            send_kwargs = dict(kwargs)
            if body is not None:
                content, body_headers = body()
                headers.update(body_headers)
                send_kwargs["content"] = content
            token = await self.tokens.token() if self.tokens is not None else None
            try:
                response = await self._client.request(method, url, headers=headers, **send_kwargs)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise TransientDestinationError(
                    f"{method} {url} failed: {type(exc).__name__}: {exc}"
                ) from exc
            except httpx.ProxyError as exc:
                raise TransientDestinationError(
                    f"{method} {url} failed at the proxy: {exc}"
                ) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise DestinationError(
                    f"{method} {url} failed: {type(exc).__name__}: {exc}"
                ) from exc
            if response.status_code == 401 and self.tokens is not None and token and attempt == 1:
                self.tokens.invalidate(token)
                kwargs["headers"] = headers
                continue
            if response.status_code in (401, 403):
                raise DestinationError(
                    f"archive refused the credentials: HTTP {response.status_code}"
                    f" {excerpt(response.content)}"
                )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._client.aclose()
        if self.tokens is not None:
            await self.tokens.aclose()


def first_multipart_part(content_type: str, body: bytes) -> bytes:
    """The body of the first part of a multipart/related answer (a single-part answer: the
    body itself)."""
    if not content_type.lower().startswith("multipart/"):
        return body
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise DestinationError("archive answered WADO-RS with multipart but no boundary")
    delimiter = b"--" + boundary.encode()
    start = body.find(delimiter)
    if start < 0:
        raise DestinationError("archive answered WADO-RS with no part")
    part_start = body.find(b"\r\n\r\n", start)
    end = body.find(b"\r\n" + delimiter, part_start)
    if part_start < 0 or end < 0:
        raise DestinationError("archive answered WADO-RS with a cut multipart body")
    return body[part_start + 4 : end]


# -- DICOM JSON helpers ----------------------------------------------------------------------


def _sequence_items(data: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = data.get(tag)
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    if not isinstance(values, list):
        return []
    return [item for item in values if isinstance(item, dict)]


def _first_value(data: Mapping[str, Any], tag: str) -> Any:
    element = data.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def _first_str(data: Mapping[str, Any], tag: str) -> str | None:
    value = _first_value(data, tag)
    if not isinstance(value, str):
        return None
    value = value.strip().rstrip("\x00")
    return value or None


def _first_int(data: Mapping[str, Any], tag: str) -> int | None:
    value = _first_value(data, tag)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        # US values should be numbers; some archives send strings, decimal or hex.
        text = value.strip().lower().removeprefix("0x")
        for base in (10, 16):
            try:
                return int(text, base)
            except ValueError:
                continue
    return None
