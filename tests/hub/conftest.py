"""Fixtures for the hub's delivery tests: an in-process hub (ASGI), destinations files, peers."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from relaypacs_dev.generate import GeneratedStudy
from relaypacs_hub.config import HubSettings
from relaypacs_hub.forwarding.base import OutgoingInstance
from relaypacs_hub.main import create_app
from relaypacs_shared.wire import format_content_digest
from tests.support.orthanc import ORTHANC_BINARY, OrthancServer, free_port, orthanc_available
from tests.support.storescp import StoreSCP, storescp_available

ADMIN_TOKEN = "admin-" + "t" * 40


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_destinations(path: Path, *entries: dict[str, Any]) -> Path:
    """A destinations TOML file; a dict value becomes a sub-table (``[destinations.oidc]``)."""
    lines: list[str] = []
    for entry in entries:
        lines.append("[[destinations]]")
        tables = {k: v for k, v in entry.items() if isinstance(v, dict)}
        lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items() if k not in tables]
        for name, table in tables.items():
            lines.append(f"[destinations.{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def outgoing_file(path: Path) -> OutgoingInstance:
    """An OutgoingInstance read from a DICOM file, streamed in 64 KiB chunks."""
    data = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)

    async def read() -> bytes:
        return data

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    return OutgoingInstance(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        read=read,
        stream=stream,
    )


class HubClient:
    """The hub app in this process, driven through its HTTP API as the agent and an admin do."""

    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @property
    def state(self) -> Any:
        return self.app.state.hub

    @property
    def delivery(self) -> Any:
        return self.app.state.hub.delivery

    async def upload(self, study: GeneratedStudy, files: list[Path] | None = None) -> None:
        for path in files or study.files:
            data = path.read_bytes()
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            r = await self.client.put(
                f"/api/v1/studies/{ds.StudyInstanceUID}/instances/{ds.SOPInstanceUID}",
                content=data,
                headers={"Content-Digest": format_content_digest(hashlib.sha256(data).hexdigest())},
            )
            assert r.status_code in (200, 201), r.text

    async def commit(
        self, study: GeneratedStudy, level: str = "routine", files: list[Path] | None = None
    ) -> dict[str, Any]:
        manifest = [
            {
                "sop_instance_uid": str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID),
                "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
            }
            for f in files or study.files
        ]
        r = await self.client.post(
            f"/api/v1/studies/{study.study_instance_uid}/commit",
            json={"service_level": level, "instances": manifest},
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def send(self, study: GeneratedStudy, level: str = "routine") -> dict[str, Any]:
        await self.upload(study)
        return await self.commit(study, level)

    async def status(self, study_uid: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/v1/studies/{study_uid}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def wait_for(
        self,
        study_uid: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 60,
        what: str = "",
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        body: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            body = await self.status(study_uid)
            if predicate(body):
                return body
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or 'a state'}: {body}")

    async def wait_delivered(self, study_uid: str, timeout: float = 60) -> dict[str, Any]:
        return await self.wait_for(
            study_uid,
            lambda b: (
                bool(b["destinations"]) and all(d["state"] == "done" for d in b["destinations"])
            ),
            timeout,
            "delivery to every destination",
        )

    async def jobs(self, **params: Any) -> list[dict[str, Any]]:
        r = await self.client.get("/api/v1/jobs", params=params, headers=self.admin)
        assert r.status_code == 200, r.text
        jobs: list[dict[str, Any]] = r.json()["jobs"]
        return jobs

    async def post_admin(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, headers=self.admin, **kwargs)


async def running_hub(settings: HubSettings) -> AsyncIterator[HubClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://hub", timeout=60
        ) as client:
            yield HubClient(app, client)


def hub_settings(tmp_path: Path, destinations: Path, **overrides: Any) -> HubSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "hub",
        "destinations_file": destinations,
        "worker_poll_seconds": 0.1,
        "forward_backoff_max_seconds": 0.5,
        "admin_token": ADMIN_TOKEN,
        "anonymous_agents": True,  # these tests upload without enrolling an agent
    }
    values.update(overrides)
    return HubSettings(**values)


HubFactory = Callable[..., Awaitable[HubClient]]


@pytest.fixture
async def make_hub() -> AsyncIterator[Callable[[HubSettings], Awaitable[HubClient]]]:
    """Start hubs inside the test; all are stopped at its end."""
    gens: list[AsyncIterator[HubClient]] = []

    async def start(settings: HubSettings) -> HubClient:
        gen = running_hub(settings)
        gens.append(gen)
        return await gen.__anext__()

    yield start
    for gen in reversed(gens):
        await gen.aclose()


@pytest.fixture
def storescp() -> Iterator[StoreSCP]:
    if not storescp_available():
        pytest.skip("needs dcmtk's storescp (apt: dcmtk)")
    with StoreSCP(aet="STORESCP") as scp:
        yield scp


# -- peers: an Orthanc that can go down and come back, a proxy that misbehaves -------------------


class RestartableOrthanc(OrthancServer):
    """An Orthanc that can be stopped and started again on the same ports with its data."""

    def pause(self) -> None:
        self._terminate()

    def resume(self, timeout: float = 30) -> None:
        config = self._write_config()  # same ports, same storage folder
        self._log_file = self.log_path.open("ab")
        binary = str(ORTHANC_BINARY) if ORTHANC_BINARY.exists() else "Orthanc"
        self._proc = subprocess.Popen(
            [binary, str(config)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.http_url}/system", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"Orthanc did not come back:\n{self.log_tail()}")


class FaultProxy:
    """An HTTP proxy in front of a real archive that can be slow or mangle requests.

    Runs uvicorn in a thread of its own, so it serves hubs in this process and in others.
    ``delay_seconds`` delays every POST (a slow archive); ``mangle_boundary`` is the number of
    coming POSTs whose multipart boundary is replaced in the Content-Type header, so the archive
    cannot split the body (Orthanc then answers 200 with empty sequences).
    """

    def __init__(self, upstream: str, port: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port or free_port()
        self.delay_seconds = 0.0
        self.mangle_boundary = 0
        self.posts: list[tuple[float, int, int]] = []  # (time, status, parts sent)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {
            k.decode(): v.decode()
            for k, v in scope["headers"]
            if k.decode().lower() not in ("host", "content-length", "transfer-encoding")
        }
        parts = 0
        if scope["method"] == "POST":
            boundary = headers.get("content-type", "").split("boundary=")[-1].encode()
            parts = body.count(b"--" + boundary) - 1 if boundary else 0
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            if self.mangle_boundary > 0:
                self.mangle_boundary -= 1
                ct = headers.get("content-type", "")
                headers["content-type"] = ct.split("boundary=")[0] + "boundary=not-the-boundary"
        query = scope.get("query_string", b"").decode()
        url = self.upstream + scope["path"] + (f"?{query}" if query else "")
        async with httpx.AsyncClient(timeout=120) as client:
            upstream = await client.request(scope["method"], url, headers=headers, content=body)
        if scope["method"] == "POST":
            self.posts.append((time.monotonic(), upstream.status_code, parts))
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status_code,
                "headers": [
                    (k.encode(), v.encode())
                    for k, v in upstream.headers.items()
                    if k.lower()
                    not in ("content-length", "transfer-encoding", "connection", "content-encoding")
                ],
            }
        )
        await send({"type": "http.response.body", "body": upstream.content})

    def start(self) -> FaultProxy:
        import uvicorn

        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise AssertionError("proxy did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


@pytest.fixture
def orthanc() -> Iterator[RestartableOrthanc]:
    if not orthanc_available():
        pytest.skip("needs /usr/sbin/Orthanc and the DICOMweb plugin")
    with RestartableOrthanc() as server:
        yield server


@pytest.fixture
def orthanc_b() -> Iterator[RestartableOrthanc]:
    if not orthanc_available():
        pytest.skip("needs /usr/sbin/Orthanc and the DICOMweb plugin")
    with RestartableOrthanc() as server:
        yield server


@pytest.fixture
def proxy(orthanc: RestartableOrthanc) -> Iterator[FaultProxy]:
    p = FaultProxy(orthanc.http_url).start()
    yield p
    p.stop()
