"""Third-party tus clients against a real hub process: tus-js-client (Node) and tuspy."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from relaypacs_shared.tus import format_checksum
from tests.support.processes import HubProcess

pytestmark = pytest.mark.integration
INTEROP = Path(__file__).resolve().parents[1] / "interop"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    h = HubProcess(tmp_path_factory.mktemp("hub"))
    h.start()
    yield h
    assert h.terminate() == 0


def _stored(hub: HubProcess, url: str) -> bytes:
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    return (Path(hub.env["RELAYPACS_HUB_DATA_DIR"]) / "uploads" / f"{upload_id}.bin").read_bytes()


def _payload(tmp_path: Path, size: int) -> Path:
    p = tmp_path / "payload.bin"
    p.write_bytes(hashlib.sha256(b"seed").digest() * (size // 32))
    return p


def _node(*args: str) -> dict[str, object]:
    if shutil.which("node") is None or not (INTEROP / "node_modules" / "tus-js-client").exists():
        pytest.skip("node or tus-js-client missing (make test installs them)")
    out = subprocess.run(
        ["node", str(INTEROP / "upload.mjs"), *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_tus_js_client_uploads(hub: HubProcess, tmp_path: Path) -> None:
    payload = _payload(tmp_path, 3_000_000)
    result = _node(f"{hub.url}/api/v1/uploads", str(payload), "1048576", "normal")
    assert _stored(hub, str(result["url"])) == payload.read_bytes()


def test_tus_js_client_resumes_after_interruption(hub: HubProcess, tmp_path: Path) -> None:
    payload = _payload(tmp_path, 3_000_000)
    result = _node(f"{hub.url}/api/v1/uploads", str(payload), "1048576", "interrupt")
    # The second session started from the hub's offset, not from zero.
    assert int(str(result["resumedFrom"])) >= 1048576
    assert _stored(hub, str(result["url"])) == payload.read_bytes()


def test_tuspy_uploads_with_checksums_and_resumes(hub: HubProcess, tmp_path: Path) -> None:
    from tusclient import client as tus_client

    payload = _payload(tmp_path, 2_500_000)
    c = tus_client.TusClient(f"{hub.url}/api/v1/uploads")
    first = c.uploader(str(payload), chunk_size=1_000_000, upload_checksum=True)
    first.upload_chunk()  # one chunk, then the "connection" is gone
    url = first.url
    assert url is not None
    resumed = c.uploader(str(payload), chunk_size=1_000_000, upload_checksum=True, url=url)
    assert resumed.offset == 1_000_000  # learnt from HEAD
    resumed.upload()
    assert _stored(hub, url) == payload.read_bytes()


def test_checksum_mismatch_is_answered_460_and_nothing_kept(hub: HubProcess) -> None:
    v = {"Tus-Resumable": "1.0.0"}
    with httpx.Client(base_url=hub.url) as c:
        r = c.post("/api/v1/uploads", headers={**v, "Upload-Length": "8"})
        url = r.headers["location"]
        r = c.patch(
            url,
            content=b"12345678",
            headers={
                **v,
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": "0",
                "Upload-Checksum": format_checksum("sha1", b"87654321"),
            },
        )
        assert r.status_code == 460
        assert c.head(url, headers=v).headers["upload-offset"] == "0"
