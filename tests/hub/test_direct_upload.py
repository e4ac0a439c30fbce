"""No agent nearby: a person sends a study straight to the hub over the agents' own protocol
(manifest first, tus segments with Upload-Checksum, commit, status), for one of their facilities,
with a TOTP second factor by default; and the hub serves the upload app at /upload/."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pyotp
import pytest

from relaypacs_dev.generate import generate_study
from relaypacs_hub.audit import read_log
from relaypacs_hub.config import HubSettings
from relaypacs_shared.segments import SegmentItem, build_segment
from relaypacs_shared.tus import encode_metadata
from tests.hub.authfix import PASSWORD, add_user, auth_settings, bearer, hub_client
from tests.hub.test_devices import _auth, _enroll

V = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def _settings(tmp_path: Path, pg_url: str | None = None, **overrides: Any) -> HubSettings:
    dest = tmp_path / "destinations.toml"
    archive = tmp_path / "archive"
    dest.write_text(f'[[destinations]]\nname = "archive"\ntype = "folder"\npath = "{archive}"\n')
    if pg_url is not None:
        overrides["database_url"] = pg_url
    return auth_settings(tmp_path, destinations_file=dest, **overrides)


async def _login(client: httpx.AsyncClient, name: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/auth/login", json={"username": name, "password": PASSWORD, **extra}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _person(
    app: Any,
    client: httpx.AsyncClient,
    name: str,
    facilities: list[str],
    role: str = "radiographer",
    *,
    totp: bool = True,
) -> dict[str, str]:
    """A signed-in user's headers; with ``totp``, after turning TOTP on and signing in with it."""
    await add_user(app, name, role, facilities)
    headers = bearer((await _login(client, name))["access_token"])
    if not totp:
        return headers
    r = await client.post("/api/v1/auth/totp/enroll", headers=headers)
    assert r.status_code == 200, r.text
    otp = pyotp.parse_uri(r.json()["provisioning_uri"])
    assert isinstance(otp, pyotp.TOTP)
    r = await client.post("/api/v1/auth/totp/confirm", json={"code": otp.now()}, headers=headers)
    assert r.status_code == 200, r.text
    body = await _login(client, name, totp_code=otp.at(int(time.time()) + 30))
    return bearer(body["access_token"])


class Study:
    """A small generated study: its manifest, and one segment holding every instance."""

    def __init__(self, tmp_path: Path, seed: int) -> None:
        gen = generate_study(tmp_path / f"src{seed}", instances=3, seed=seed, rows=32, columns=32)
        self.uid = gen.study_instance_uid
        self.items = []
        for f in gen.files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            self.items.append(
                SegmentItem(
                    path=f,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    sha256=hashlib.sha256(f.read_bytes()).hexdigest(),
                    size=f.stat().st_size,
                    compress=True,
                )
            )
        seg = build_segment(
            tmp_path / f"seg{seed}.bin", segment_id=f"s{seed}", study_instance_uid=self.uid,
            items=self.items,
        )  # fmt: skip
        self.segment = seg.path.read_bytes()
        self.segment_sha = seg.sha256

    def manifest(self, level: str = "routine", **extra: Any) -> dict[str, Any]:
        instances = [
            {
                "sop_instance_uid": i.sop_instance_uid,
                "series_instance_uid": i.series_instance_uid,
                "sha256": i.sha256,
                "size": i.size,
            }
            for i in self.items
        ]
        return {"service_level": level, "instances": instances, **extra}

    def commit(self, level: str = "routine", **extra: Any) -> dict[str, Any]:
        instances = [
            {"sop_instance_uid": i.sop_instance_uid, "sha256": i.sha256} for i in self.items
        ]
        return {"service_level": level, "instances": instances, **extra}

    def metadata(self, **extra: str) -> str:
        return encode_metadata(
            {
                "kind": "relaypacs-segment",
                "study": self.uid,
                "segment": "s1",
                "sha256": self.segment_sha,
                **extra,
            }
        )


def _checksum(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


async def _create(
    client: httpx.AsyncClient, who: dict[str, str], study: Study, **meta: str
) -> httpx.Response:
    return await client.post(
        "/api/v1/uploads",
        headers={
            **V,
            **who,
            "Upload-Length": str(len(study.segment)),
            "Upload-Metadata": study.metadata(**meta),
        },
    )


async def _patch(
    client: httpx.AsyncClient, who: dict[str, str], url: str, data: bytes, offset: int = 0
) -> httpx.Response:
    return await client.patch(
        url,
        content=data,
        headers={
            **V,
            **who,
            "Content-Type": OCTETS,
            "Upload-Offset": str(offset),
            "Upload-Checksum": _checksum(data),
        },
    )


async def test_a_person_sends_a_study_straight_to_the_hub(tmp_path: Path, pg_url: str) -> None:
    study = Study(tmp_path, seed=11)
    async with hub_client(_settings(tmp_path, pg_url)) as (app, client):
        alice = await _person(app, client, "alice", ["fac-a"])
        bob = await _person(app, client, "bob", ["fac-a"])
        outsider = await _person(app, client, "olga", ["fac-b"], role="clinician")

        # Manifest first: everything is missing; the study is claimed for alice's one facility.
        r = await client.post(
            f"/api/v1/studies/{study.uid}/manifest", json=study.manifest("stat"), headers=alice
        )
        assert r.status_code == 200, r.text
        assert r.json()["held"] == 0 and len(r.json()["missing"]) == 3

        # One segment over tus, the checksum on every PATCH; sent in two PATCHes.
        r = await _create(client, alice, study)
        assert r.status_code == 201, r.text
        url = r.headers["Location"]
        half = len(study.segment) // 2
        r = await _patch(client, alice, url, study.segment[:half])
        assert r.status_code == 204, r.text
        # Another person, even of the same facility, does not see alice's upload.
        for method in ("HEAD", "DELETE"):
            r = await client.request(method, url, headers={**V, **bob})
            assert r.status_code == 404, (method, r.text)
        r = await _patch(client, bob, url, study.segment[half:], offset=half)
        assert r.status_code == 404, r.text
        r = await client.head(url, headers={**V, **alice})
        assert r.status_code == 200 and r.headers["Upload-Offset"] == str(half)
        r = await _patch(client, alice, url, study.segment[half:], offset=half)
        assert r.status_code == 204, r.text

        # Asked again, the hub holds everything: nothing is sent twice.
        r = await client.post(
            f"/api/v1/studies/{study.uid}/manifest", json=study.manifest("stat"), headers=alice
        )
        assert r.status_code == 200, r.text
        assert r.json()["missing"] == [] and r.json()["held"] == 3
        assert r.json()["missing_bytes"] == 0

        # Committed and routed like an agent's study: STAT, a forward job to the destination.
        r = await client.post(
            f"/api/v1/studies/{study.uid}/commit", json=study.commit("stat"), headers=alice
        )
        assert r.status_code == 200, r.text
        status = r.json()
        assert status["state"] == "committed" and status["service_level"] == "stat"
        assert status["instance_count"] == 3
        assert [d["destination"] for d in status["destinations"]] == ["archive"]
        r = await client.get(f"/api/v1/studies/{study.uid}", headers=alice)
        assert r.status_code == 200 and r.json()["destinations"][0]["destination"] == "archive"
        # A person of another facility may not read it.
        r = await client.get(f"/api/v1/studies/{study.uid}", headers=outsider)
        assert r.status_code == 403 and r.json()["code"] == "forbidden"

        # The audit log names alice, not an agent.
        records = [e.record async for e in read_log(app.state.hub.sessionmaker)]
        committed = [x for x in records if x.action == "study.committed"]
        assert len(committed) == 1 and committed[0].actor == "alice"
        assert committed[0].target == study.uid
        assert committed[0].details["via"] == "direct"
        assert committed[0].details["facility"] == "fac-a"
        segments = [x for x in records if x.action == "segment.received"]
        assert [x.actor for x in segments] == ["alice"]


async def test_a_person_sends_only_for_their_own_facilities(tmp_path: Path, pg_url: str) -> None:
    mine, theirs, shared = Study(tmp_path, 21), Study(tmp_path, 22), Study(tmp_path, 23)
    async with hub_client(_settings(tmp_path, pg_url)) as (app, client):
        alice = await _person(app, client, "alice", ["fac-a"])
        carol = await _person(app, client, "carol", ["fac-a", "fac-c"], role="clinician")

        # Naming a facility that is not hers.
        r = await client.post(
            f"/api/v1/studies/{mine.uid}/manifest",
            json=mine.manifest(facility="fac-b"),
            headers=alice,
        )
        assert r.status_code == 403, r.text
        assert r.json() == {"code": "forbidden", "detail": "you are not a member of facility fac-b"}
        r = await client.post(
            f"/api/v1/studies/{mine.uid}/commit", json=mine.commit(facility="fac-b"), headers=alice
        )
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        r = await _create(client, alice, mine, facility="fac-b")
        assert r.status_code == 403 and r.json()["code"] == "forbidden"

        # A person's upload names its study.
        r = await client.post(
            "/api/v1/uploads", headers={**V, **alice, "Upload-Length": "10"}
        )  # fmt: skip
        assert r.status_code == 400
        assert "names the study" in r.json()["detail"]

        # A study facility B's agent already sent is B's: held for an admin, as for a device.
        device = _auth(await _enroll(client, "fac-b", "b-agent"))
        r = await client.post(
            f"/api/v1/studies/{theirs.uid}/manifest", json=theirs.manifest(), headers=device
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            f"/api/v1/studies/{theirs.uid}/manifest", json=theirs.manifest(), headers=alice
        )
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "study_held"
        assert "the browser keeps it" in r.json()["detail"]
        r = await _create(client, alice, theirs)
        assert r.status_code == 409 and r.json()["code"] == "study_held"
        r = await client.post(
            f"/api/v1/studies/{theirs.uid}/commit", json=theirs.commit(), headers=alice
        )
        assert r.status_code == 409 and r.json()["code"] == "study_held"
        claims = await client.get("/api/v1/study-claims", headers=bearer("admin-" + "b" * 40))
        assert [(c["facility"], c["state"]) for c in claims.json()] == [("fac-a", "held")]

        # Belonging to several facilities, a person says which one the study is for.
        r = await client.post(
            f"/api/v1/studies/{shared.uid}/manifest", json=shared.manifest(), headers=carol
        )
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "facility_required"
        assert "fac-a, fac-c" in r.json()["detail"]
        r = await client.post(
            f"/api/v1/studies/{shared.uid}/manifest",
            json=shared.manifest(facility="fac-c"),
            headers=carol,
        )
        assert r.status_code == 200, r.text
        # Now fac-c's: alice (fac-a only) is held off it too.
        r = await client.post(
            f"/api/v1/studies/{shared.uid}/manifest", json=shared.manifest(), headers=alice
        )
        assert r.status_code == 409 and r.json()["code"] == "study_held"


async def test_direct_uploads_need_a_second_factor_unless_turned_off(
    tmp_path: Path, pg_url: str
) -> None:
    study = Study(tmp_path, 31)
    async with hub_client(_settings(tmp_path, pg_url, upload_roles="radiographer,clinician")) as (
        app,
        client,
    ):
        plain = await _person(app, client, "pat", ["fac-a"], totp=False)
        for r in (
            await client.post(
                f"/api/v1/studies/{study.uid}/manifest", json=study.manifest(), headers=plain
            ),
            await _create(client, plain, study),
            await client.post(
                f"/api/v1/studies/{study.uid}/commit", json=study.commit(), headers=plain
            ),
            await client.get(f"/api/v1/studies/{study.uid}", headers=plain),
        ):
            assert r.status_code == 403, r.text
            assert r.json()["code"] == "totp_required"
            assert "turn on two-factor sign-in" in r.json()["detail"]
        # A role that may not upload (RELAYPACS_HUB_UPLOAD_ROLES), even with TOTP.
        rad = await _person(app, client, "rad", ["fac-a"], role="radiologist")
        r = await client.post(
            f"/api/v1/studies/{study.uid}/manifest", json=study.manifest(), headers=rad
        )
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        # A radiologist still reads study status as before (no second factor asked for it).
        r = await client.get(f"/api/v1/studies/{study.uid}", headers=rad)
        assert r.status_code == 404 and r.json()["code"] == "unknown_study"
        # The admin machine token is not a person: no uploads.
        r = await client.post(
            f"/api/v1/studies/{study.uid}/manifest",
            json=study.manifest(),
            headers=bearer("admin-" + "b" * 40),
        )
        assert r.status_code == 403

    settings = _settings(tmp_path, pg_url, direct_upload_require_totp=False)
    async with hub_client(settings) as (app, client):
        # The same database: pat exists already; sign in again.
        plain = bearer((await _login(client, "pat"))["access_token"])
        r = await client.post(
            f"/api/v1/studies/{study.uid}/manifest", json=study.manifest(), headers=plain
        )
        assert r.status_code == 200, r.text
        r = await _create(client, plain, study)
        assert r.status_code == 201, r.text


async def test_a_person_who_must_enroll_totp_first_cannot_upload(tmp_path: Path) -> None:
    study = Study(tmp_path, 41)
    settings = _settings(tmp_path, require_totp_roles="radiographer")
    async with hub_client(settings) as (app, client):
        await add_user(app, "rita", "radiographer")
        token = await _login(client, "rita")
        assert token["scope"] == "totp-enroll"
        r = await client.post(
            f"/api/v1/studies/{study.uid}/manifest",
            json=study.manifest(),
            headers=bearer(token["access_token"]),
        )
        assert r.status_code == 403 and "enroll a TOTP second factor" in r.json()["detail"]


async def test_upload_creation_is_limited_per_person(tmp_path: Path) -> None:
    a, b = Study(tmp_path, 51), Study(tmp_path, 52)
    settings = _settings(tmp_path, upload_create_rate=2, direct_upload_require_totp=False)
    async with hub_client(settings) as (app, client):
        alice = await _person(app, client, "alice", ["fac-a"], totp=False)
        bob = await _person(app, client, "bob", ["fac-a"], totp=False)
        for _ in range(2):
            r = await _create(client, alice, a)
            assert r.status_code == 201, r.text
        r = await _create(client, alice, a)
        assert r.status_code == 429 and "Retry-After" in r.headers
        r = await _create(client, bob, b)
        assert r.status_code == 201, r.text
        # Signing in is counted apart: alice still signs in.
        await _login(client, "alice")


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    d = tmp_path / "dist"
    (d / "assets").mkdir(parents=True)
    (d / "index.html").write_text("<!doctype html><title>RelayPACS</title><div id=root></div>")
    (d / "dashboard.html").write_text("<!doctype html><title>dashboard</title>")
    (d / "assets" / "index-abc123.js").write_text("console.log('upload app')")
    (d / "sw.js").write_text("self.addEventListener('install', () => {})")
    (d / "manifest.webmanifest").write_text('{"name": "RelayPACS"}')
    return d


async def test_the_hub_serves_the_upload_app(tmp_path: Path, dist: Path) -> None:
    async with hub_client(auth_settings(tmp_path, pwa_dir=dist)) as (_app, client):
        r = await client.get("/upload")
        assert r.status_code == 307 and r.headers["location"] == "/upload/"
        r = await client.get("/upload/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "<div id=root>" in r.text
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "worker-src 'self'" in csp and "manifest-src 'self'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-cache"
        r = await client.get("/upload/assets/index-abc123.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        r = await client.get("/upload/sw.js")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
        r = await client.get("/upload/manifest.webmanifest")
        assert r.headers["content-type"].startswith("application/manifest+json")
        # The app's own pages are its entry; a missing file and a way out are not.
        r = await client.get("/upload/batches/42")
        assert r.status_code == 200 and "<div id=root>" in r.text
        for path in ("/upload/assets/gone.js", "/upload/..%2fsecret.txt", "/upload/.env"):
            r = await client.get(path)
            assert r.status_code == 404, path
        r = await client.get("/upload/config.json")
        assert r.status_code == 200
        assert r.json() == {"target": "hub", "api": "/api/v1", "require_totp": True}


async def test_the_upload_app_not_built_says_how_to_build_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    async with hub_client(auth_settings(tmp_path, pwa_dir=empty)) as (_app, client):
        for path in ("/upload/", "/upload/anything"):
            r = await client.get(path)
            assert r.status_code == 503 and "make pwa" in r.text
