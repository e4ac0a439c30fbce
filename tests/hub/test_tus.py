"""tus 1.0 conformance of the hub's upload endpoint (one process, ASGI transport)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relaypacs_hub.config import HubSettings
from relaypacs_hub.main import create_app
from relaypacs_shared.tus import encode_metadata, format_checksum

V = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        HubSettings(
            data_dir=tmp_path / "hub",
            upload_max_bytes=1_000_000,
            upload_expiry_seconds=60,
            anonymous_agents=True,
        )
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as c,
    ):
        c.app = app  # type: ignore[attr-defined]
        yield c


async def _create(c: httpx.AsyncClient, length: int, **headers: str) -> str:
    r = await c.post("/api/v1/uploads", headers={**V, "Upload-Length": str(length), **headers})
    assert r.status_code == 201, r.text
    assert r.headers["Tus-Resumable"] == "1.0.0"
    return r.headers["Location"]


async def _patch(c: httpx.AsyncClient, url: str, offset: int, data: bytes, **headers: str):  # type: ignore[no-untyped-def]
    return await c.patch(
        url,
        content=data,
        headers={**V, "Content-Type": OCTETS, "Upload-Offset": str(offset), **headers},
    )


async def test_options_advertises_version_extensions_and_checksums(
    client: httpx.AsyncClient,
) -> None:
    r = await client.options("/api/v1/uploads")
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    ext = set(r.headers["Tus-Extension"].split(","))
    assert {
        "creation",
        "creation-with-upload",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    } <= ext
    assert set(r.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5"}
    assert r.headers["Tus-Max-Size"] == "1000000"


async def test_requests_without_tus_resumable_get_412(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/uploads", headers={"Upload-Length": "10"})
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"


async def test_upload_in_pieces_with_head_between(client: httpx.AsyncClient) -> None:
    data = bytes(range(256)) * 100
    meta = encode_metadata({"filename": "scan.dcm", "kind": "test"})
    url = await _create(client, len(data), **{"Upload-Metadata": meta})
    h = await client.head(url, headers=V)
    assert h.status_code == 200
    assert h.headers["Upload-Offset"] == "0"
    assert h.headers["Upload-Length"] == str(len(data))
    assert h.headers["Cache-Control"] == "no-store"
    assert h.headers["Upload-Metadata"] == meta
    assert "Upload-Expires" in h.headers
    r = await _patch(client, url, 0, data[:10000])
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "10000"
    r = await _patch(client, url, 10000, data[10000:])
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == str(len(data))
    uploads = client.app.state.hub.tus.store  # type: ignore[attr-defined]
    assert (await uploads.local_path(url.rsplit("/", 1)[1])).read_bytes() == data


async def test_offset_mismatch_is_409_and_keeps_the_upload(client: httpx.AsyncClient) -> None:
    url = await _create(client, 100)
    assert (await _patch(client, url, 0, b"a" * 40)).status_code == 204
    r = await _patch(client, url, 10, b"b" * 10)
    assert r.status_code == 409
    assert (await client.head(url, headers=V)).headers["Upload-Offset"] == "40"


@pytest.mark.parametrize("algo", ["sha1", "sha256", "md5"])
async def test_checksum_verified_and_mismatch_is_460(client: httpx.AsyncClient, algo: str) -> None:
    url = await _create(client, 20)
    good = await _patch(
        client, url, 0, b"x" * 10, **{"Upload-Checksum": format_checksum(algo, b"x" * 10)}
    )
    assert good.status_code == 204
    bad = await _patch(
        client, url, 10, b"y" * 10, **{"Upload-Checksum": format_checksum(algo, b"z" * 10)}
    )
    assert bad.status_code == 460
    # Nothing of the damaged body was kept.
    assert (await client.head(url, headers=V)).headers["Upload-Offset"] == "10"


async def test_unsupported_checksum_algorithm_is_400(client: httpx.AsyncClient) -> None:
    url = await _create(client, 4)
    digest = base64.b64encode(hashlib.sha512(b"abcd").digest()).decode()
    r = await _patch(client, url, 0, b"abcd", **{"Upload-Checksum": f"sha512 {digest}"})
    assert r.status_code == 400


async def test_wrong_content_type_is_415(client: httpx.AsyncClient) -> None:
    url = await _create(client, 4)
    r = await client.patch(
        url,
        content=b"abcd",
        headers={**V, "Content-Type": "application/json", "Upload-Offset": "0"},
    )
    assert r.status_code == 415


async def test_too_large_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/uploads", headers={**V, "Upload-Length": "1000001"})
    assert r.status_code == 413
    url = await _create(client, 5)
    assert (await _patch(client, url, 0, b"123456")).status_code == 413


async def test_creation_with_upload(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/uploads",
        content=b"hello",
        headers={**V, "Upload-Length": "11", "Content-Type": OCTETS},
    )
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == "5"
    assert (await _patch(client, r.headers["Location"], 5, b" world")).headers[
        "Upload-Offset"
    ] == "11"


async def test_deferred_length(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/uploads", headers={**V, "Upload-Defer-Length": "1"})
    url = r.headers["Location"]
    assert (await client.head(url, headers=V)).headers["Upload-Defer-Length"] == "1"
    r = await _patch(client, url, 0, b"abc", **{"Upload-Length": "3"})
    assert r.status_code == 204
    assert (await client.head(url, headers=V)).headers["Upload-Length"] == "3"


async def test_termination(client: httpx.AsyncClient) -> None:
    url = await _create(client, 10)
    assert (await client.delete(url, headers=V)).status_code == 204
    assert (await client.head(url, headers=V)).status_code == 404
    assert (await _patch(client, url, 0, b"a")).status_code == 404


async def test_expired_upload_is_gone_and_cleaned(client: httpx.AsyncClient) -> None:
    from datetime import timedelta

    from relaypacs_hub.db.models import Upload, utcnow

    url = await _create(client, 10)
    upload_id = url.rsplit("/", 1)[1]
    state = client.app.state.hub  # type: ignore[attr-defined]
    async with state.sessionmaker() as s, s.begin():
        u = await s.get(Upload, upload_id)
        u.expires_at = utcnow() - timedelta(seconds=1)
    assert (await client.head(url, headers=V)).status_code == 410
    assert (await _patch(client, url, 0, b"a")).status_code == 410
    assert await state.tus.expire() == 1
    assert (await client.head(url, headers=V)).status_code == 404
    assert not (await state.tus.store.local_path(upload_id)).exists()


async def test_concatenation_of_partial_uploads(client: httpx.AsyncClient) -> None:
    parts = []
    for piece in (b"first-", b"second-", b"third"):
        url = await _create(client, len(piece), **{"Upload-Concat": "partial"})
        assert (await _patch(client, url, 0, piece)).status_code == 204
        parts.append(url)
    r = await client.post(
        "/api/v1/uploads", headers={**V, "Upload-Concat": "final;" + " ".join(parts)}
    )
    assert r.status_code == 201
    final = r.headers["Location"]
    h = await client.head(final, headers=V)
    assert (
        h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(b"first-second-third"))
    )
    assert h.headers["Upload-Concat"].startswith("final;")
    store = client.app.state.hub.tus.store  # type: ignore[attr-defined]
    assert (await store.local_path(final.rsplit("/", 1)[1])).read_bytes() == b"first-second-third"
    # A final upload cannot be patched.
    assert (await _patch(client, final, 18, b"x")).status_code == 403


async def test_final_of_unfinished_partial_is_refused(client: httpx.AsyncClient) -> None:
    url = await _create(client, 10, **{"Upload-Concat": "partial"})
    r = await client.post("/api/v1/uploads", headers={**V, "Upload-Concat": f"final;{url}"})
    assert r.status_code == 400
