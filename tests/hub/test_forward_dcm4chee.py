"""The dcm4chee-arc profile, against a small HTTP server that answers as dcm4chee-arc documents.

dcm4chee-arc (and its Keycloak) cannot run on this machine. The server below follows what the
archive's sources and wiki say, and no more (README, "dcm4chee-arc: what was verified"):

- Keycloak token endpoint ``/realms/<realm>/protocol/openid-connect/token``: OAuth 2.0 client
  credentials, form-encoded ``grant_type``/``client_id``/``client_secret``; answers
  ``access_token``/``expires_in``/``token_type``; a bad secret is 401 ``unauthorized_client``.
- STOW-RS at ``/dcm4chee-arc/aets/<AET>/rs/studies`` (StowRS.java): 200 when every instance was
  stored, 202 when some failed, 409 when none was stored; Failed SOP Sequence items carry
  dcm4chee's own Failure Reasons (0xA771: subsequent occurrence of a rejected object), and the
  last error comment is repeated in a ``Warning`` header; an instance it already holds is
  ignored and listed as stored; an unknown AE title is 404 ``{"errorMessage": ...}``.
- QIDO-RS at ``/dcm4chee-arc/aets/<AET>/rs/studies/<uid>/instances`` with ``limit``/``offset``;
  no match is 204.
- Every archive request needs ``Authorization: Bearer <token>``; a revoked token is 401.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from relaypacs_dev.generate import generate_study
from relaypacs_hub.forwarding.config import DicomWebDestinationConfig, OidcClientCredentials
from relaypacs_hub.forwarding.oidc import ClientCredentialsTokens
from relaypacs_shared.errors import DestinationError, TransientDestinationError
from tests.hub.conftest import HubClient, hub_settings, write_destinations
from tests.support.orthanc import free_port

REALM_TOKEN_PATH = "/realms/dcm4che/protocol/openid-connect/token"
CLIENT_ID, CLIENT_SECRET = "relaypacs", "s3cret-client"


@dataclass
class Dcm4cheeEmulator:
    aets: set[str] = field(default_factory=lambda: {"DCM4CHEE"})
    expires_in: int = 300
    rejected: set[str] = field(default_factory=set)  # SOP UIDs with a rejection note
    stored: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # sop -> (study, bytes)
    valid_tokens: set[str] = field(default_factory=set)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _server: Any = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def revoke_all(self) -> None:
        self.valid_tokens.clear()

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode()))
        status, out_headers, content = self.handle(method, path, query, headers, body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in out_headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if path == REALM_TOKEN_PATH and method == "POST":
            return self._token(headers, body)
        self.requests.append((method, path, headers.get("authorization")))
        parts = path.split("/")
        # /dcm4chee-arc/aets/<AET>/rs/studies[/<uid>/instances]
        if (
            len(parts) < 6
            or parts[1:3] != ["dcm4chee-arc", "aets"]
            or parts[4:6] != ["rs", "studies"]
        ):
            return 404, {"content-type": "text/html"}, b"<html>Not Found</html>"
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid_tokens:
            return 401, {"www-authenticate": 'Bearer realm="dcm4che"'}, b""
        if parts[3] not in self.aets:
            error = {"errorMessage": f"No such Application Entity: {parts[3]}"}
            return 404, {"content-type": "application/json"}, json.dumps(error).encode()
        if method == "POST" and len(parts) == 6:
            return self._stow(headers, body)
        if method == "GET" and len(parts) == 6:
            return 204, {}, b""
        if method == "GET" and len(parts) == 8 and parts[7] == "instances":
            return self._qido(parts[6], query)
        return 405, {}, b""

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert headers["content-type"] == "application/x-www-form-urlencoded"
        form = dict(urllib.parse.parse_qsl(body.decode()))
        self.token_forms.append(form)
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != CLIENT_ID
            or form.get("client_secret") != CLIENT_SECRET
        ):
            error = {
                "error": "unauthorized_client",
                "error_description": "Invalid client or Invalid client credentials",
            }
            return 401, {"content-type": "application/json"}, json.dumps(error).encode()
        token = f"tok-{len(self.token_forms)}"
        self.valid_tokens.add(token)
        answer = {
            "access_token": token,
            "expires_in": self.expires_in,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": "profile email",
        }
        return 200, {"content-type": "application/json"}, json.dumps(answer).encode()

    def _stow(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        content_type = headers.get("content-type", "")
        assert content_type.startswith("multipart/related")
        assert 'type="application/dicom"' in content_type
        assert "chunked" not in headers.get("transfer-encoding", "")
        assert int(headers["content-length"]) == len(body)
        boundary = content_type.split("boundary=")[1].encode()
        chunks = body.split(b"--" + boundary)[1:-1]
        referenced, failed, comment = [], [], None
        for chunk in chunks:
            data = chunk.split(b"\r\n\r\n", 1)[1][:-2]
            ds = pydicom.dcmread(io.BytesIO(data))
            sop, cls = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
            if sop in self.rejected:
                comment = (
                    f"Subsequent occurrence of rejected Object [uid={sop}, rejection=113001^DCM]"
                )
                failed.append(_ref(cls, sop, 0xA771))
                continue
            self.stored.setdefault(sop, (str(ds.StudyInstanceUID), data))  # NEVER overwrite
            referenced.append(_ref(cls, sop))
        response: dict[str, Any] = {}
        if failed:
            response["00081198"] = {"vr": "SQ", "Value": failed}
        if referenced:
            response["00081199"] = {"vr": "SQ", "Value": referenced}
        status = 409 if not referenced else 202 if failed else 200
        out = {"content-type": "application/dicom+json"}
        if comment:
            out["warning"] = comment
        return status, out, json.dumps(response).encode()

    def _qido(self, study: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        uids = sorted(s for s, (st, _) in self.stored.items() if st == study)
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 1000))
        page = uids[offset : offset + limit]
        if not page:
            return 204, {}, b""
        items = [{"00080018": {"vr": "UI", "Value": [u]}} for u in page]
        return 200, {"content-type": "application/dicom+json"}, json.dumps(items).encode()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Dcm4cheeEmulator:
        import uvicorn

        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
            interface="asgi3",
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(timeout=10)


def _ref(sop_class: str, sop: str, failure: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [sop_class]},
        "00081155": {"vr": "UI", "Value": [sop]},
    }
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


@pytest.fixture
def dcm4chee() -> Any:
    emulator = Dcm4cheeEmulator().start()
    yield emulator
    emulator.stop()


def dcm4chee_dest(emulator: Dcm4cheeEmulator, **extra: Any) -> dict[str, Any]:
    oidc = {
        "token_url": emulator.url + REALM_TOKEN_PATH,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    oidc.update(extra.pop("oidc", {}))
    return {
        "name": "dcm4chee",
        "type": "dicomweb",
        "profile": "dcm4chee-arc",
        "url": emulator.url,
        "aet": "DCM4CHEE",
        "max_batch_instances": 3,
        "oidc": oidc,
        **extra,
    }


def test_profile_url_layout() -> None:
    def url(**kw: Any) -> str:
        return DicomWebDestinationConfig.model_validate({"name": "d", **kw}).service_url

    base = {"profile": "dcm4chee-arc", "aet": "DCM4CHEE"}
    assert url(url="https://pacs:8443", **base) == "https://pacs:8443/dcm4chee-arc/aets/DCM4CHEE/rs"
    assert url(url="https://pacs:8443/dcm4chee-arc/", **base) == (
        "https://pacs:8443/dcm4chee-arc/aets/DCM4CHEE/rs"
    )
    full = "https://pacs:8443/dcm4chee-arc/aets/OTHER/rs"
    assert url(url=full, profile="dcm4chee-arc") == full
    assert url(url="http://o:8042", profile="orthanc") == "http://o:8042/dicom-web"
    assert url(url="http://o:8042/dicom-web/", profile="orthanc") == "http://o:8042/dicom-web"
    with pytest.raises(ValueError, match="needs aet"):
        url(url="https://pacs:8443", profile="dcm4chee-arc")


@pytest.mark.integration
async def test_delivers_with_a_client_credentials_token_and_confirms(
    tmp_path: Path, make_hub: Any, dcm4chee: Dcm4cheeEmulator
) -> None:
    dests = write_destinations(tmp_path / "d.toml", dcm4chee_dest(dcm4chee))
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests))
    study = generate_study(tmp_path / "s", instances=7, seed=50, rows=32, columns=32)
    await hub.send(study)
    status = await hub.wait_delivered(study.study_instance_uid)
    assert status["destinations"][0]["confirmed_instances"] == 7
    assert dcm4chee.token_forms == [
        {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    ]
    stow = "/dcm4chee-arc/aets/DCM4CHEE/rs/studies"
    qido = f"{stow}/{study.study_instance_uid}/instances"
    assert [(m, p) for m, p, _ in dcm4chee.requests] == [("POST", stow)] * 3 + [("GET", qido)]
    assert {auth for _, _, auth in dcm4chee.requests} == {"Bearer tok-1"}
    for uid, path in zip(study.sop_instance_uids, study.files, strict=True):
        assert dcm4chee.stored[uid][1] == path.read_bytes()

    # The token is revoked (or expired early): one 401, a new token, the same request again.
    dcm4chee.revoke_all()
    again = generate_study(tmp_path / "t", instances=2, seed=51, rows=32, columns=32)
    await hub.send(again)
    await hub.wait_delivered(again.study_instance_uid)
    assert len(dcm4chee.token_forms) == 2
    assert [auth for _, _, auth in dcm4chee.requests[4:]] == ["Bearer tok-1"] + ["Bearer tok-2"] * 2
    health = await hub.client.get("/api/v1/destinations/dcm4chee", headers=hub.admin)
    assert health.json()["probe"] == {"reachable": True, "detail": "QIDO-RS answered HTTP 204"}


@pytest.mark.integration
async def test_202_with_a_dcm4chee_failure_reason_keeps_the_rest_and_says_why(
    tmp_path: Path, make_hub: Any, dcm4chee: Dcm4cheeEmulator
) -> None:
    dests = write_destinations(tmp_path / "d.toml", dcm4chee_dest(dcm4chee))
    hub: HubClient = await make_hub(
        hub_settings(tmp_path, dests, forward_max_attempts=2, forward_backoff_max_seconds=0.2)
    )
    study = generate_study(tmp_path / "s", instances=3, seed=52, rows=32, columns=32)
    rejected = study.sop_instance_uids[1]
    dcm4chee.rejected.add(rejected)
    await hub.send(study)
    await hub.wait_for(
        study.study_instance_uid, lambda b: b["destinations"][0]["state"] == "dead", 30, "dead"
    )
    (dead,) = await hub.jobs(state="dead")
    assert dead["last_error"].startswith(
        "1 of 3 instance(s) not confirmed by the archive: subsequent occurrence of a rejected"
        " object (0xA771); archive says: Subsequent occurrence of rejected Object"
    )
    assert set(dcm4chee.stored) == set(study.sop_instance_uids) - {rejected}
    status = await hub.status(study.study_instance_uid)
    assert status["destinations"][0]["confirmed_instances"] == 2


@pytest.mark.integration
async def test_unknown_ae_title_is_a_configuration_error_not_an_empty_archive(
    tmp_path: Path, make_hub: Any, dcm4chee: Dcm4cheeEmulator
) -> None:
    dests = write_destinations(tmp_path / "d.toml", dcm4chee_dest(dcm4chee, aet="WRONG"))
    hub: HubClient = await make_hub(hub_settings(tmp_path, dests))
    study = generate_study(tmp_path / "s", instances=1, seed=53, rows=32, columns=32)
    await hub.send(study)
    await hub.wait_for(
        study.study_instance_uid, lambda b: b["destinations"][0]["state"] == "dead", 30, "dead"
    )
    (dead,) = await hub.jobs(state="dead")
    assert dead["attempts"] == 3  # a refusal retrying cannot cure is parked sooner
    assert "No such Application Entity: WRONG" in dead["last_error"]
    health = await hub.client.get("/api/v1/destinations/dcm4chee", headers=hub.admin)
    assert health.json()["probe"]["reachable"] is False


@pytest.mark.integration
async def test_wrong_client_secret_is_reported_in_the_words_of_the_token_endpoint(
    tmp_path: Path, make_hub: Any, dcm4chee: Dcm4cheeEmulator
) -> None:
    dest = dcm4chee_dest(dcm4chee, oidc={"client_secret": "wrong"})
    hub: HubClient = await make_hub(
        hub_settings(tmp_path, write_destinations(tmp_path / "d.toml", dest))
    )
    study = generate_study(tmp_path / "s", instances=1, seed=54, rows=32, columns=32)
    await hub.send(study)
    await hub.wait_for(
        study.study_instance_uid, lambda b: b["destinations"][0]["state"] == "dead", 30, "dead"
    )
    (dead,) = await hub.jobs(state="dead")
    assert dead["last_error"] == (
        "DestinationError: token endpoint refused the client credentials: HTTP 401"
        " unauthorized_client: Invalid client or Invalid client credentials"
    )
    assert dcm4chee.requests == []  # nothing was sent to the archive without a token


async def test_tokens_are_cached_until_shortly_before_they_expire() -> None:
    now = [1000.0]
    issued: list[int] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        issued.append(1)
        return httpx.Response(
            200, json={"access_token": f"t{len(issued)}", "expires_in": 300, "token_type": "Bearer"}
        )

    tokens = ClientCredentialsTokens(
        OidcClientCredentials(token_url="https://kc/token", client_id="c", client_secret="s"),
        transport=httpx.MockTransport(endpoint),
        clock=lambda: now[0],
    )
    assert await tokens.token() == "t1"
    now[0] += 260  # 300 s token, refreshed 30 s before its end
    assert await tokens.token() == "t1"
    now[0] += 20
    assert await tokens.token() == "t2"
    results = await asyncio.gather(*(tokens.token() for _ in range(5)))
    assert results == ["t2"] * 5 and len(issued) == 2  # concurrent callers share one fetch
    tokens.invalidate("t1")  # an old token: the newer one is kept
    assert await tokens.token() == "t2"
    tokens.invalidate("t2")
    assert await tokens.token() == "t3"
    await tokens.aclose()


@pytest.mark.parametrize(
    ("response", "error", "words"),
    [
        (httpx.Response(503), TransientDestinationError, "HTTP 503"),
        (
            httpx.Response(200, json={"token_type": "Bearer"}),
            DestinationError,
            "without an access_token",
        ),
        (
            httpx.Response(200, json={"access_token": "x", "token_type": "MAC"}),
            DestinationError,
            "not Bearer",
        ),
        (httpx.Response(400, text="<html>"), DestinationError, "HTTP 400"),
    ],
)
async def test_token_endpoint_failures(
    response: httpx.Response, error: type[Exception], words: str
) -> None:
    tokens = ClientCredentialsTokens(
        OidcClientCredentials(token_url="https://kc/token", client_id="c", client_secret="s"),
        transport=httpx.MockTransport(lambda request: response),
    )
    with pytest.raises(error, match=words):
        await tokens.token()
    await tokens.aclose()
