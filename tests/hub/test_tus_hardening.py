"""The hub's tus endpoint under hostile input: header tricks, other callers' uploads, debris."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from relaypacs_dev.generate import generate_study
from relaypacs_hub.audit import read_log
from relaypacs_hub.config import HubSettings
from relaypacs_hub.db.models import Upload
from relaypacs_shared.segments import SegmentItem, build_segment
from relaypacs_shared.tus import encode_metadata
from tests.hub.authfix import auth_settings, hub_client
from tests.hub.test_devices import _auth, _enroll

V = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


@pytest.fixture
def settings(tmp_path: Path) -> HubSettings:
    return auth_settings(tmp_path)


def _raw(value: str) -> bytes:
    """The header's bytes as a client would send them (a single 0xB2 reads as "²")."""
    return value.encode("latin-1") if all(ord(c) < 256 for c in value) else value.encode()


@pytest.mark.parametrize("value", ["²", "١٢", "1²", " 12x", "-1", "9" * 20])
async def test_non_ascii_or_malformed_lengths_are_a_400_not_a_500(
    settings: HubSettings, value: str
) -> None:
    async with hub_client(settings) as (_app, client):
        dev = _auth(await _enroll(client, "fac-a"))
        r = await client.post(
            "/api/v1/uploads",
            headers={**V, **dev, "Upload-Length": _raw(value)},
        )
        assert r.status_code == 400, r.text
        assert "Upload-Length" in r.json()["detail"]
        assert r.headers["Tus-Resumable"] == "1.0.0"
        url = await client.post("/api/v1/uploads", headers={**V, **dev, "Upload-Length": "4"})
        r = await client.patch(
            url.headers["Location"],
            content=b"abcd",
            headers={
                **V,
                **dev,
                "Content-Type": OCTETS,
                "Upload-Offset": _raw(value),
            },
        )
        assert r.status_code == 400, r.text
        assert "Upload-Offset" in r.json()["detail"]


async def test_a_study_uid_over_64_characters_is_a_clear_400(
    settings: HubSettings, caplog: pytest.LogCaptureFixture
) -> None:
    async with hub_client(settings) as (_app, client):
        dev = _auth(await _enroll(client, "fac-a"))
        study = "1.2." + "3" * 80
        r = await client.post(
            "/api/v1/uploads",
            headers={
                **V,
                **dev,
                "Upload-Length": "4",
                "Upload-Metadata": encode_metadata({"study": study}),
            },
        )
        assert r.status_code == 400, r.text
        assert r.json()["detail"].startswith("Upload-Metadata study:")
        assert "not a valid UID" in r.json()["detail"]


async def test_upload_metadata_limits(settings: HubSettings) -> None:
    async with hub_client(settings) as (_app, client):
        dev = _auth(await _enroll(client, "fac-a"))
        many = ",".join(f"k{i} {base64.b64encode(b'v').decode()}" for i in range(40))
        huge = encode_metadata({"filename": "x" * 5000})
        for meta in (many, huge, "bad\x7fkey YQ=="):
            r = await client.post(
                "/api/v1/uploads",
                headers={**V, **dev, "Upload-Length": "4", "Upload-Metadata": meta},
            )
            assert r.status_code == 400, r.text
            assert "Upload-Metadata" in r.json()["detail"]


async def test_another_device_cannot_see_touch_or_concatenate_an_upload(
    settings: HubSettings,
) -> None:
    async with hub_client(settings) as (_app, client):
        a = _auth(await _enroll(client, "fac-a", "a"))
        b = _auth(await _enroll(client, "fac-b", "b"))

        async def partial(who: dict[str, str], data: bytes) -> str:
            r = await client.post(
                "/api/v1/uploads",
                headers={**V, **who, "Upload-Length": str(len(data)), "Upload-Concat": "partial"},
            )
            assert r.status_code == 201, r.text
            url = r.headers["Location"]
            r = await client.patch(
                url,
                content=data,
                headers={**V, **who, "Content-Type": OCTETS, "Upload-Offset": "0"},
            )
            assert r.status_code == 204, r.text
            return str(url)

        url = await partial(a, b"secret")
        assert (await client.head(url, headers={**V, **b})).status_code == 404
        r = await client.patch(
            url, content=b"x", headers={**V, **b, "Content-Type": OCTETS, "Upload-Offset": "6"}
        )
        assert r.status_code == 404
        assert (await client.delete(url, headers={**V, **b})).status_code == 404
        r = await client.post(
            "/api/v1/uploads", headers={**V, **b, "Upload-Concat": f"final;{url}"}
        )
        assert r.status_code == 404, r.text
        assert r.json()["code"] == "unknown_upload"
        # Still whole for its owner, who may concatenate it.
        h = await client.head(url, headers={**V, **a})
        assert h.status_code == 200 and h.headers["Upload-Offset"] == "6"
        r = await client.post(
            "/api/v1/uploads", headers={**V, **a, "Upload-Concat": f"final;{url}"}
        )
        assert r.status_code == 201, r.text
        assert r.headers["Upload-Length"] == "6"


async def test_offset_conflict_tells_the_offset(settings: HubSettings) -> None:
    async with hub_client(settings) as (_app, client):
        dev = _auth(await _enroll(client, "fac-a"))
        url = await client.post("/api/v1/uploads", headers={**V, **dev, "Upload-Length": "8"})
        r = await client.patch(
            url.headers["Location"],
            content=b"abcd",
            headers={**V, **dev, "Content-Type": OCTETS, "Upload-Offset": "3"},
        )
        assert r.status_code == 409
        assert r.json()["code"] == "offset_conflict"
        assert r.headers["Upload-Offset"] == "0"


async def test_the_janitor_removes_staged_bodies_a_crash_left(settings: HubSettings) -> None:
    async with hub_client(settings) as (app, _client):
        tus = app.state.hub.tus
        staging = tus.store.staging_dir()
        stale, fresh = staging / "dead.part", staging / "live.part"
        stale.write_bytes(b"x" * 1000)
        fresh.write_bytes(b"y")
        hours_ago = time.time() - 2 * 3600
        os.utime(stale, (hours_ago, hours_ago))
        await tus.expire()
        assert not stale.exists()
        assert fresh.exists()  # a PATCH may still be writing it


async def test_a_failed_statement_never_carries_its_values(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from relaypacs_hub.db.session import make_engine

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT NOT NULL UNIQUE)"))
            await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": "DOE^JANE"})
            with pytest.raises(SQLAlchemyError) as caught:
                await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": "DOE^JANE"})
        assert "DOE^JANE" not in str(caught.value)
        assert "hidden due to hide_parameters" in str(caught.value)
    finally:
        await engine.dispose()


async def test_a_segment_entry_larger_than_its_manifest_entry_is_refused_before_work(
    tmp_path: Path,
) -> None:
    """The sizes the manifest declared bound what a segment may inflate to: an entry claiming
    more is refused before it is decompressed, and the instance stays missing."""

    study = generate_study(tmp_path / "src", instances=2, seed=9, rows=32, columns=32)
    items = []
    for i, f in enumerate(study.files):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        true_size = f.stat().st_size
        items.append(
            SegmentItem(
                path=f,
                sop_instance_uid=ds.SOPInstanceUID,
                series_instance_uid=ds.SeriesInstanceUID,
                sha256=hashlib.sha256(f.read_bytes()).hexdigest(),
                # The second entry lies about its size in the segment's index.
                size=true_size if i == 0 else 2**30,
                compress=True,
            )
        )
    uid = study.study_instance_uid
    manifest = {
        "instances": [
            {
                "sop_instance_uid": it.sop_instance_uid,
                "series_instance_uid": it.series_instance_uid,
                "sha256": it.sha256,
                "size": f.stat().st_size,
            }
            for it, f in zip(items, study.files, strict=True)
        ]
    }
    seg = build_segment(tmp_path / "seg.bin", segment_id="s1", study_instance_uid=uid, items=items)
    body = seg.path.read_bytes()
    settings = HubSettings(data_dir=tmp_path / "hub", worker_enabled=False, anonymous_agents=True)
    async with hub_client(settings) as (_app, client):
        r = await client.post(f"/api/v1/studies/{uid}/manifest", json=manifest)
        assert r.status_code == 200 and len(r.json()["missing"]) == 2
        meta = encode_metadata(
            {"kind": "relaypacs-segment", "study": uid, "segment": "s1", "sha256": seg.sha256}
        )
        r = await client.post(
            "/api/v1/uploads",
            headers={**V, "Upload-Length": str(len(body)), "Upload-Metadata": meta},
        )
        assert r.status_code == 201, r.text
        r = await client.patch(
            r.headers["location"],
            content=body,
            headers={**V, "Content-Type": OCTETS, "Upload-Offset": "0"},
        )
        assert r.status_code == 204, r.text
        r = await client.post(f"/api/v1/studies/{uid}/manifest", json=manifest)
        # The honest entry is stored; the lying one is still missing.
        assert r.json()["missing"] == [items[1].sop_instance_uid]
        async with _app.state.hub.sessionmaker() as session:
            errors = [u.error for u in await session.scalars(select(Upload))]
        assert any(e and "entry declares 1073741824 bytes, the manifest" in e for e in errors)
        # One audit record for the segment, with its counts (not one per instance: the chain
        # is a cluster-wide serialised append).
        records = [r.record async for r in read_log(_app.state.hub.sessionmaker)]
        segment = [r for r in records if r.action == "segment.received"]
        assert len(segment) == 1 and segment[0].target == uid
        assert segment[0].details["instances"] == 1 and segment[0].details["rejected"] == 1
        assert segment[0].outcome == "minor_failure"
        assert not [r for r in records if r.action == "instance.received"]
