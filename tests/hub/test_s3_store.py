"""S3 object store and upload store against moto's S3 server over real HTTP (minio SDK)."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from minio import Minio

from relaypacs_dev.generate import generate_study
from relaypacs_hub.config import HubSettings
from relaypacs_hub.main import create_app
from relaypacs_hub.storage.base import content_key
from relaypacs_hub.storage.s3 import S3ObjectStore, S3UploadStore, make_client
from relaypacs_shared.errors import StorageError, TransientStorageError
from relaypacs_shared.segments import SegmentItem, build_segment, should_compress
from relaypacs_shared.tus import encode_metadata
from relaypacs_shared.wire import format_content_digest
from tests.support.moto_server import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    MotoServer,
    MotoStartError,
    free_loopback_port,
    moto_server,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
V = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    try:
        with moto_server(tmp_path_factory.mktemp("moto")) as server:
            yield server
    except MotoStartError as exc:
        pytest.skip(f"moto's S3 server cannot start here: {exc}")


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    return moto.make_bucket()


def _objects(moto: MotoServer, bucket: str, prefix: str = "") -> dict[str, bytes]:
    c = moto.client()
    out = {}
    for o in c.list_objects(bucket, prefix=prefix, recursive=True):
        resp = c.get_object(bucket, o.object_name or "")
        try:
            out[o.object_name or ""] = resp.read()
        finally:
            resp.close()
            resp.release_conn()
    return out


def _client(moto: MotoServer, retries: int = 3) -> Minio:
    return make_client(
        moto.endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION, retries=retries
    )


def _object_store(moto: MotoServer, bucket: str, tmp: Path, prefix: str = "hub-a") -> S3ObjectStore:
    return S3ObjectStore(_client(moto), bucket, prefix=prefix, staging=tmp / "staging")


def _upload_store(moto: MotoServer, bucket: str, tmp: Path, prefix: str = "hub-a") -> S3UploadStore:
    return S3UploadStore(_client(moto), bucket, prefix=prefix, local_dir=tmp)


def _stage(store: S3ObjectStore | S3UploadStore, data: bytes) -> Path:
    path = store.staging_dir() / f"{hashlib.sha256(data).hexdigest()[:16]}-{time.monotonic_ns()}"
    path.write_bytes(data)
    return path


# -- object store ---------------------------------------------------------------------------


async def test_40mb_object_round_trip_streamed_with_bounded_memory(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    store = _object_store(moto, bucket, tmp_path)
    data = os.urandom(40 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    staged = _stage(store, data)
    del data

    await store.put_file(content_key(sha), staged)

    assert not staged.exists(), "put_file takes ownership of the staged file"
    # Content-addressed, under the prefix, uploaded in 16 MiB parts (multipart ETag "-3").
    stat = moto.client().stat_object(bucket, f"hub-a/sha256/{sha[:2]}/{sha}")
    assert stat.size == 40 * MiB
    assert (stat.etag or "").endswith("-3")
    assert await store.exists(content_key(sha))

    h = hashlib.sha256()
    n = 0
    largest = 0
    tracemalloc.start()
    try:
        async for chunk in store.iter_bytes(content_key(sha), chunk_size=MiB):
            h.update(chunk)
            n += len(chunk)
            largest = max(largest, len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 40 * MiB
    assert h.hexdigest() == sha
    assert largest <= MiB
    assert peak < 8 * MiB, f"streaming 40 MiB peaked at {peak / MiB:.1f} MiB"


async def test_small_object_get_exists_delete(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    store = _object_store(moto, bucket, tmp_path, prefix="")
    data = b"DICM" * 1000
    key = content_key(hashlib.sha256(data).hexdigest())
    assert not await store.exists(key)

    await store.put_file(key, _stage(store, data))
    assert await store.get_bytes(key) == data
    assert _objects(moto, bucket) == {key: data}

    await store.delete(key)
    assert not await store.exists(key)
    await store.delete(key)  # deleting what is gone is not an error
    with pytest.raises(StorageError) as err:
        await store.get_bytes(key)
    assert not isinstance(err.value, TransientStorageError)
    assert "NoSuchKey" in str(err.value)


async def test_keys_that_escape_are_refused(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    store = _object_store(moto, bucket, tmp_path)
    for key in ("../other/x", "/abs", "", "sha256/../../x"):
        with pytest.raises(StorageError):
            await store.exists(key)


async def test_missing_bucket_is_a_permanent_error(moto: MotoServer, tmp_path: Path) -> None:
    store = _object_store(moto, "no-such-bucket-here", tmp_path)
    staged = _stage(store, b"x" * 10)
    with pytest.raises(StorageError) as err:
        await store.put_file(content_key("ab" * 32), staged)
    assert not isinstance(err.value, TransientStorageError)
    assert "NoSuchBucket" in str(err.value)
    assert staged.exists(), "a failed put must not lose the staged bytes"


async def test_endpoint_down_is_transient_and_keeps_the_bytes(tmp_path: Path) -> None:
    try:
        ctx = moto_server(tmp_path)
        server = ctx.__enter__()
    except MotoStartError as exc:
        pytest.skip(f"moto's S3 server cannot start here: {exc}")
    try:
        bucket = server.make_bucket()
        objects = _object_store(server, bucket, tmp_path / "o")
        uploads = _upload_store(server, bucket, tmp_path / "u")
        key = content_key("cd" * 32)
        await objects.put_file(key, _stage(objects, b"held before the outage"))
        await uploads.create("up1")
    finally:
        ctx.__exit__(None, None, None)
    assert server.proc.poll() is not None

    staged = _stage(objects, b"arrives during the outage")
    started = time.monotonic()
    with pytest.raises(TransientStorageError) as err:
        await objects.put_file(content_key("ef" * 32), staged)
    elapsed = time.monotonic() - started
    assert "unreachable" in str(err.value)
    assert staged.exists(), "a failed put must not lose the staged bytes"
    assert elapsed < 5, f"an outage should fail within seconds, took {elapsed:.1f}s"
    # The other calls with one retry each, to keep the test short.
    objects = S3ObjectStore(_client(server, retries=1), bucket, staging=tmp_path / "o")
    uploads = S3UploadStore(_client(server, retries=1), bucket, local_dir=tmp_path / "u")
    with pytest.raises(TransientStorageError):
        await objects.get_bytes(key)
    with pytest.raises(TransientStorageError):
        await objects.exists(key)
    with pytest.raises(TransientStorageError):
        async for _ in objects.iter_bytes(key):
            pass
    chunk = _stage(uploads, b"patch body")
    with pytest.raises(TransientStorageError):
        await uploads.append("up1", 0, chunk)
    with pytest.raises(TransientStorageError):
        await uploads.size("up1")


# -- upload store ---------------------------------------------------------------------------


async def test_append_replay_size_local_path_delete(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    store = _upload_store(moto, bucket, tmp_path)
    uid = "a1b2c3"
    await store.create(uid)
    assert await store.size(uid) == 0

    assert await store.append(uid, 0, _stage(store, b"a" * 10)) == 10
    assert await store.append(uid, 10, _stage(store, b"b" * 5)) == 15
    assert await store.size(uid) == 15
    assert (await store.local_path(uid)).read_bytes() == b"a" * 10 + b"b" * 5
    names = sorted(_objects(moto, bucket, f"hub-a/uploads/{uid}/"))
    assert names == [f"hub-a/uploads/{uid}/{0:020d}", f"hub-a/uploads/{uid}/{10:020d}"]

    # A PATCH replayed at offset 10 (the hub crashed before recording 15) replaces the tail.
    assert await store.append(uid, 10, _stage(store, b"c" * 7)) == 17
    assert await store.size(uid) == 17
    assert (await store.local_path(uid)).read_bytes() == b"a" * 10 + b"c" * 7

    # A replay inside a chunk cuts that chunk (server-side) and drops everything after it.
    assert await store.append(uid, 4, _stage(store, b"d" * 3)) == 7
    path = await store.local_path(uid)
    assert path.read_bytes() == b"a" * 4 + b"d" * 3
    assert await store.size(uid) == 7

    with pytest.raises(StorageError):
        await store.append(uid, 20, _stage(store, b"gap"))
    assert await store.size(uid) == 7

    await store.delete(uid)
    assert _objects(moto, bucket, f"hub-a/uploads/{uid}/") == {}
    assert not path.exists(), "the local cache file goes with the upload"
    assert await store.size(uid) == 0


async def test_chunks_left_past_a_gap_by_a_crash_are_ignored_then_dropped(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    store = _upload_store(moto, bucket, tmp_path)
    uid = "cafe01"
    await store.create(uid)
    await store.append(uid, 0, _stage(store, b"x" * 8))
    # What a crash half-way through a replay can leave: a chunk that no longer joins up.
    orphan = _stage(store, b"orphan")
    moto.client().fput_object(bucket, f"hub-a/uploads/{uid}/{100:020d}", str(orphan))

    assert await store.size(uid) == 8
    assert (await store.local_path(uid)).read_bytes() == b"x" * 8
    assert await store.append(uid, 8, _stage(store, b"y" * 4)) == 12
    assert sorted(_objects(moto, bucket, f"hub-a/uploads/{uid}/")) == [
        f"hub-a/uploads/{uid}/{0:020d}",
        f"hub-a/uploads/{uid}/{8:020d}",
    ]


async def test_concat_builds_the_final_from_partial_uploads(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    store = _upload_store(moto, bucket, tmp_path)
    parts = {"part1": [b"one-", b"two-"], "part2": [b"three-"], "part3": [b"four", b"!"]}
    for uid, pieces in parts.items():
        await store.create(uid)
        offset = 0
        for piece in pieces:
            offset = await store.append(uid, offset, _stage(store, piece))
    await store.create("final1")

    assert await store.concat("final1", list(parts)) == len(b"one-two-three-four!")
    assert await store.size("final1") == len(b"one-two-three-four!")
    assert (await store.local_path("final1")).read_bytes() == b"one-two-three-four!"
    # The partial uploads are untouched.
    assert (await store.local_path("part2")).read_bytes() == b"three-"


async def test_two_hub_processes_share_uploads_through_the_bucket(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    # Two stores with their own clients and local folders: what two hub replicas have.
    a = _upload_store(moto, bucket, tmp_path / "hub-1")
    b = _upload_store(moto, bucket, tmp_path / "hub-2")
    uid = "beef42"
    await a.create(uid)
    assert await a.append(uid, 0, _stage(a, b"first half, ")) == 12
    assert await b.size(uid) == 12
    assert await b.append(uid, 12, _stage(b, b"second half")) == 23
    assert await a.size(uid) == 23
    assert (await a.local_path(uid)).read_bytes() == b"first half, second half"
    # A replay on replica A after B cached a copy: B's next read sees the new bytes.
    assert (await b.local_path(uid)).read_bytes() == b"first half, second half"
    await a.append(uid, 12, _stage(a, b"other end"))
    assert (await b.local_path(uid)).read_bytes() == b"first half, other end"
    await b.delete(uid)
    assert await a.size(uid) == 0


async def test_invalid_upload_id_is_refused(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    store = _upload_store(moto, bucket, tmp_path)
    for uid in ("../x", "a/b", "a*", ""):
        with pytest.raises(StorageError):
            await store.size(uid)


# -- the hub with object_store = "s3" -------------------------------------------------------


@pytest.fixture
async def s3_hub(moto: MotoServer, bucket: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        object_store="s3",
        s3_endpoint=moto.endpoint,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,  # type: ignore[arg-type]
        s3_bucket=bucket,
        s3_region=REGION,
        s3_secure=False,
        s3_prefix="hub",
        worker_enabled=False,
        anonymous_agents=True,  # this suite is about the object store, not credentials
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as c,
    ):
        yield c


async def test_instance_put_through_the_hub_lands_in_s3(
    s3_hub: httpx.AsyncClient, moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    study = generate_study(tmp_path / "src", instances=2, series=1, seed=3, rows=32, columns=32)
    path = study.files[0]
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    ds = pydicom.dcmread(path, stop_before_pixels=True)

    r = await s3_hub.put(
        f"/api/v1/studies/{ds.StudyInstanceUID}/instances/{ds.SOPInstanceUID}",
        content=data,
        headers={"Content-Digest": format_content_digest(sha)},
    )

    assert r.status_code in (200, 201), r.text
    resp = moto.client().get_object(bucket, f"hub/{content_key(sha)}")
    try:
        assert resp.read() == data
    finally:
        resp.close()
        resp.release_conn()
    # The staged copy went to S3 and left the local disk.
    assert list((tmp_path / "hub" / "objects" / ".staging").iterdir()) == []


async def test_tus_upload_through_the_hub_lands_in_s3(
    s3_hub: httpx.AsyncClient, moto: MotoServer, bucket: str
) -> None:
    data = bytes(range(256)) * 400
    r = await s3_hub.post("/api/v1/uploads", headers={**V, "Upload-Length": str(len(data))})
    assert r.status_code == 201, r.text
    url = r.headers["Location"]
    uid = url.rsplit("/", 1)[1]
    for start, end in ((0, 30000), (30000, len(data))):
        r = await s3_hub.patch(
            url,
            content=data[start:end],
            headers={**V, "Content-Type": OCTETS, "Upload-Offset": str(start)},
        )
        assert r.status_code == 204, r.text
        assert r.headers["Upload-Offset"] == str(end)

    chunks = _objects(moto, bucket, f"hub/uploads/{uid}/")
    assert sorted(chunks) == [f"hub/uploads/{uid}/{0:020d}", f"hub/uploads/{uid}/{30000:020d}"]
    assert b"".join(chunks[k] for k in sorted(chunks)) == data
    assert (await s3_hub.head(url, headers=V)).headers["Upload-Offset"] == str(len(data))

    assert (await s3_hub.delete(url, headers=V)).status_code == 204
    assert _objects(moto, bucket, f"hub/uploads/{uid}/") == {}


async def test_segment_through_the_hub_is_unpacked_into_s3(
    s3_hub: httpx.AsyncClient, moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    study = generate_study(tmp_path / "src", instances=3, series=1, seed=5, rows=32, columns=32)
    items = []
    for f in study.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        items.append(
            SegmentItem(
                path=f,
                sop_instance_uid=ds.SOPInstanceUID,
                series_instance_uid=ds.SeriesInstanceUID,
                sha256=hashlib.sha256(f.read_bytes()).hexdigest(),
                size=f.stat().st_size,
                compress=should_compress(ds.file_meta.TransferSyntaxUID),
            )
        )
    uid = study.study_instance_uid
    r = await s3_hub.post(
        f"/api/v1/studies/{uid}/manifest",
        json={
            "instances": [
                {
                    "sop_instance_uid": i.sop_instance_uid,
                    "series_instance_uid": i.series_instance_uid,
                    "sha256": i.sha256,
                    "size": i.size,
                }
                for i in items
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["missing"]) == 3
    seg = build_segment(
        tmp_path / "seg.bin", segment_id="seg1", study_instance_uid=uid, items=items
    )
    body = seg.path.read_bytes()
    meta = encode_metadata(
        {"kind": "relaypacs-segment", "study": uid, "segment": "seg1", "sha256": seg.sha256}
    )
    r = await s3_hub.post(
        "/api/v1/uploads",
        headers={**V, "Upload-Length": str(len(body)), "Upload-Metadata": meta},
    )
    url = r.headers["Location"]
    half = len(body) // 2
    for start, end in ((0, half), (half, len(body))):
        r = await s3_hub.patch(
            url,
            content=body[start:end],
            headers={**V, "Content-Type": OCTETS, "Upload-Offset": str(start)},
        )
        assert r.status_code == 204, r.text

    for i in items:
        resp = moto.client().get_object(bucket, f"hub/{content_key(i.sha256)}")
        try:
            assert hashlib.sha256(resp.read()).hexdigest() == i.sha256
        finally:
            resp.close()
            resp.release_conn()
    # Processed segments leave nothing behind: no chunks in the bucket, no cache on disk.
    assert _objects(moto, bucket, "hub/uploads/") == {}
    assert list((tmp_path / "hub" / "uploads" / ".cache").iterdir()) == []
    r = await s3_hub.post(
        f"/api/v1/studies/{uid}/manifest",
        json={
            "instances": [
                {
                    "sop_instance_uid": i.sop_instance_uid,
                    "series_instance_uid": i.series_instance_uid,
                    "sha256": i.sha256,
                    "size": i.size,
                }
                for i in items
            ]
        },
    )
    assert r.json()["missing"] == []


async def test_hub_answers_503_while_s3_is_unreachable(tmp_path: Path) -> None:
    settings = HubSettings(
        data_dir=tmp_path / "hub",
        object_store="s3",
        s3_endpoint=f"127.0.0.1:{free_loopback_port()}",  # nothing listens there
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,  # type: ignore[arg-type]
        s3_secure=False,
        worker_enabled=False,
        anonymous_agents=True,
    )
    study = generate_study(tmp_path / "src", instances=1, series=1, seed=4, rows=32, columns=32)
    data = study.files[0].read_bytes()
    ds = pydicom.dcmread(study.files[0], stop_before_pixels=True)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as c,
    ):
        r = await c.put(
            f"/api/v1/studies/{ds.StudyInstanceUID}/instances/{ds.SOPInstanceUID}",
            content=data,
            headers={"Content-Digest": format_content_digest(hashlib.sha256(data).hexdigest())},
        )
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "storage_unavailable"
    assert "Retry-After" in r.headers


def test_settings_refuse_s3_without_endpoint_and_default_secrets_in_production() -> None:
    with pytest.raises(ValueError, match="S3_ENDPOINT"):
        HubSettings(object_store="s3", s3_endpoint="")
    with pytest.raises(ValueError, match="S3_ENDPOINT"):
        HubSettings(object_store="s3", s3_endpoint="https://minio.lan:9000")
    token = "3f9a1c7e5b2d4086a9e1f3c5b7d90e2a4c6b8d0f1e3a5c7b"
    for secret in ("", "minioadmin"):
        with pytest.raises(ValueError, match="S3_SECRET_KEY"):
            HubSettings(
                environment="production",
                agent_token=token,  # type: ignore[arg-type]
                object_store="s3",
                s3_endpoint="minio.lan:9000",
                s3_access_key="relaypacs",
                s3_secret_key=secret,  # type: ignore[arg-type]
            )
    ok = HubSettings(
        environment="production",
        agent_token=token,  # type: ignore[arg-type]
        object_store="s3",
        s3_endpoint="minio.lan:9000",
        s3_access_key="relaypacs",
        s3_secret_key="a-long-and-random-secret",  # type: ignore[arg-type]
    )
    assert ok.s3_secure is True
