"""PWA uploads at the agent: tus 1.0 into the same ingest as every other source, with the
batch's service level and clinical metadata on the study, refusals in words, resume from the
offset, and each person's uploads their own."""

from __future__ import annotations

import json
from pathlib import Path

from relaypacs_dev.generate import GeneratedStudy
from tests.agent.webfix import (
    TUS,
    create_upload,
    patch_headers,
    tus_metadata,
    tus_upload,
    web_app,
)

BATCH = {
    "service_level": "stat",
    "clinical_history": "fall, query fracture",
    "referring_clinician": "Dr Okafor",
    "expected_files": 3,
    "label": "CT head",
}


async def test_study_uploaded_with_metadata_is_held_and_sent_now(
    tmp_path: Path, small_study: GeneratedStudy
) -> None:
    async with web_app(tmp_path) as web:
        h = await web.login("radiographer1")
        r = await web.client.post("/api/v1/batches", json=BATCH, headers=h)
        assert r.status_code == 201, r.text
        batch = r.json()
        assert batch["service_level"] == "stat" and batch["files"]["received"] == 0
        for f in small_study.files:
            await tus_upload(web, h, batch["id"], f.read_bytes(), f.name, chunk=7000)
        view = (await web.client.get(f"/api/v1/batches/{batch['id']}", headers=h)).json()
        assert view["files"] == {"received": 3, "accepted": 3, "duplicate": 0, "quarantined": 0}
        [study] = view["studies"]
        assert study["study_instance_uid"] == small_study.study_instance_uid
        assert study["stage"] == "agent" and study["instances"] == 3
        assert study["bytes_total"] == small_study.total_bytes
        # The bytes in the spool are the bytes sent; the study carries the batch's metadata.
        rows = web.store.query("SELECT sha256, spool_path FROM instances")
        assert len(rows) == 3 and all(Path(r["spool_path"]).exists() for r in rows)
        spooled = sorted(Path(r["spool_path"]).read_bytes() for r in rows)
        assert spooled == sorted(f.read_bytes() for f in small_study.files)
        s = web.store.query("SELECT * FROM studies")[0]
        assert s["service_level"] == "stat"
        meta = json.loads(s["metadata"])
        assert meta["clinical_history"] == "fall, query fracture"
        assert meta["referring_clinician"] == "Dr Okafor"
        assert meta["facility"] == "north" and meta["submitted_by"] == "radiographer1"
        assert s["ready_at"] is None
        r = await web.client.post(f"/api/v1/batches/{batch['id']}/send", headers=h)
        assert r.status_code == 200 and r.json()["sent_at"] is not None
        assert web.store.query("SELECT ready_at FROM studies")[0]["ready_at"] is not None
        assert web.woken  # the sender was told
        assert list(web.upload_dir.iterdir()) == []  # nothing left behind
        actions = [r["action"] for r in web.store.query("SELECT action FROM audit_log")]
        assert actions.count("lan.upload_received") == 3 and "lan.batch_sent" in actions


async def test_not_dicom_is_quarantined_with_a_reason_in_words(tmp_path: Path) -> None:
    async with web_app(tmp_path) as web:
        h = await web.login("clinician1")
        batch = (await web.client.post("/api/v1/batches", json=BATCH, headers=h)).json()
        await tus_upload(web, h, batch["id"], b"shopping list\n" * 20, "notes.txt")
        view = (await web.client.get(f"/api/v1/batches/{batch['id']}", headers=h)).json()
        assert view["files"]["quarantined"] == 1 and view["studies"] == []
        [refused] = view["refused"]
        assert refused["filename"] == "notes.txt"
        assert refused["reason"] == "not_dicom"
        assert "DICM" in refused["message"] or "DICOM" in refused["message"]
        q = web.store.query("SELECT original_name, source FROM quarantine")
        assert q[0]["original_name"] == "notes.txt" and q[0]["source"] == "pwa:clinician1"
        kept = list((tmp_path / "quarantine").rglob("*notes.txt"))
        assert len(kept) == 1 and kept[0].read_bytes() == b"shopping list\n" * 20
        # The facility's admin sees it in the agent's quarantine, with the reason, and the
        # counts add up in the status.
        admin = await web.login("admin1")
        q = (await web.client.get("/api/v1/quarantine", headers=admin)).json()
        assert q["total"] == 1
        assert q["entries"][0]["original_name"] == "notes.txt"
        assert q["entries"][0]["reason"] == "not_dicom" and q["entries"][0]["message"]
        st = (await web.client.get("/api/v1/status", headers=admin)).json()
        assert st["totals"]["quarantined"] == 1 and st["totals"]["instances"] == 0
        assert "studies" not in st  # no per-study clinical metadata on this route
        assert (await web.client.get("/api/v1/quarantine", headers=h)).status_code == 403


async def test_resume_after_a_cut_from_the_offset(
    tmp_path: Path, small_study: GeneratedStudy
) -> None:
    data = small_study.files[0].read_bytes()
    async with web_app(tmp_path) as web:
        h = await web.login("clinician1")
        batch = (await web.client.post("/api/v1/batches", json=BATCH, headers=h)).json()
        url = await create_upload(web, h, batch["id"], len(data), "a.dcm")
        r = await web.client.patch(url, content=data[:1000], headers=patch_headers(h, 0))
        assert r.status_code == 204 and r.headers["upload-offset"] == "1000"
        # A stale offset (the phone thinks it sent more) is a 409 with the truth.
        r = await web.client.patch(url, content=data[5000:], headers=patch_headers(h, 5000))
        assert r.status_code == 409 and r.headers["upload-offset"] == "1000"
        head = await web.client.head(url, headers={**h, **TUS})
        assert head.status_code == 200 and head.headers["upload-offset"] == "1000"
        assert head.headers["upload-length"] == str(len(data))
        assert head.headers["cache-control"] == "no-store"
        r = await web.client.patch(url, content=data[1000:], headers=patch_headers(h, 1000))
        assert r.status_code == 204 and r.headers["x-relaypacs-outcome"] == "accepted"
        spooled = web.store.query("SELECT spool_path FROM instances")[0]["spool_path"]
        assert Path(spooled).read_bytes() == data
        # Sending the same file again in a new upload is a duplicate, not a second copy.
        await tus_upload(web, h, batch["id"], data, "a-again.dcm")
        view = (await web.client.get(f"/api/v1/batches/{batch['id']}", headers=h)).json()
        assert view["files"]["accepted"] == 1 and view["files"]["duplicate"] == 1
        assert len(web.store.query("SELECT * FROM instances")) == 1


async def test_tus_protocol_errors(tmp_path: Path) -> None:
    async with web_app(tmp_path, max_upload_bytes=10_000) as web:
        h = await web.login("clinician1")
        batch = (await web.client.post("/api/v1/batches", json=BATCH, headers=h)).json()
        meta = tus_metadata(filename="a.dcm", batch=batch["id"])
        opts = await web.client.options("/api/v1/uploads")
        assert opts.status_code == 204 and opts.headers["tus-version"] == "1.0.0"
        assert "creation" in opts.headers["tus-extension"]
        assert opts.headers["tus-max-size"] == "10000"
        base = {**h, "Upload-Metadata": meta}
        r = await web.client.post("/api/v1/uploads", headers={**base, "Upload-Length": "10"})
        assert r.status_code == 412  # no Tus-Resumable
        r = await web.client.post(
            "/api/v1/uploads", headers={**base, **TUS, "Upload-Length": "20000"}
        )
        assert r.status_code == 413
        r = await web.client.post("/api/v1/uploads", headers={**base, **TUS})
        assert r.status_code == 400  # no Upload-Length
        r = await web.client.post(
            "/api/v1/uploads",
            headers={
                **h,
                **TUS,
                "Upload-Length": "10",
                "Upload-Metadata": tus_metadata(batch="nope"),
            },
        )
        assert r.status_code == 404 and r.json()["code"] == "no_batch"
        r = await web.client.post(
            "/api/v1/uploads",
            headers={**h, **TUS, "Upload-Length": "10", "Upload-Metadata": "x !!"},
        )
        assert r.status_code == 400
        r = await web.client.post("/api/v1/uploads", headers={**base, **TUS, "Upload-Length": "10"})
        url = r.headers["location"]
        r = await web.client.patch(url, content=b"x", headers={**h, **TUS, "Upload-Offset": "0"})
        assert r.status_code == 415
        r = await web.client.patch(
            url,
            content=b"x" * 11,
            headers={
                **h,
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert r.status_code == 413
        assert r.headers["x-content-type-options"] == "nosniff"  # the body guard's answer too
        assert (await web.client.head(url, headers={**h, **TUS})).headers["upload-offset"] == "0"
        r = await web.client.delete(url, headers={**h, **TUS})
        assert r.status_code == 204
        assert (await web.client.head(url, headers={**h, **TUS})).status_code == 404


async def test_each_person_sees_only_their_own_uploads(
    tmp_path: Path, small_study: GeneratedStudy
) -> None:
    async with web_app(tmp_path) as web:
        alice = await web.login("clinician1")
        bob = await web.login("radiographer1")
        admin = await web.login("admin1")
        batch = (await web.client.post("/api/v1/batches", json=BATCH, headers=alice)).json()
        url = await tus_upload(web, alice, batch["id"], small_study.files[0].read_bytes())
        assert (
            await web.client.get(f"/api/v1/batches/{batch['id']}", headers=bob)
        ).status_code == 404
        assert (await web.client.head(url, headers={**bob, **TUS})).status_code == 404
        r = await web.client.post(
            "/api/v1/uploads",
            headers={
                **bob,
                **TUS,
                "Upload-Length": "10",
                "Upload-Metadata": tus_metadata(batch=batch["id"]),
            },
        )
        assert r.status_code == 404  # no uploading into someone else's batch
        assert (await web.client.get("/api/v1/batches", headers=bob)).json()["batches"] == []
        mine = (await web.client.get("/api/v1/batches", headers=alice)).json()["batches"]
        assert [b["id"] for b in mine] == [batch["id"]]
        assert (
            await web.client.get(f"/api/v1/batches/{batch['id']}", headers=admin)
        ).status_code == 200


async def test_bad_batch_bodies_are_422(tmp_path: Path) -> None:
    async with web_app(tmp_path) as web:
        h = await web.login("clinician1")
        for body in (
            {"service_level": "urgent"},
            {"clinical_history": 5},
            {"expected_files": -1},
            {"expected_files": True},
            {"referring_clinician": "x" * 500},
        ):
            r = await web.client.post("/api/v1/batches", json=body, headers=h)
            assert r.status_code == 422, body
            assert r.json()["detail"]


async def test_an_upload_finished_before_a_crash_is_taken_in_at_start(
    tmp_path: Path, small_study: GeneratedStudy
) -> None:
    data = small_study.files[0].read_bytes()
    async with web_app(tmp_path) as web:
        h = await web.login("clinician1")
        batch = (await web.client.post("/api/v1/batches", json=BATCH, headers=h)).json()
        row = web.batches.create_upload(batch["id"], "clinician1", "a.dcm", len(data))
        # The last byte was written and the offset recorded, then the agent died.
        web.batches.part_path(row.id).write_bytes(data)
        web.batches.set_offset(row.id, len(data))
        assert web.batches.recover() == 1
        assert web.batches.upload(row.id).outcome == "accepted"
        assert len(web.store.query("SELECT * FROM instances")) == 1
        assert web.batches.recover() == 0


async def test_pwa_is_served_with_its_security_headers(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>RelayPACS</title>")
    (dist / "assets" / "app-1.js").write_text("console.log(1)")
    (dist / "sw.js").write_text("// sw")
    (tmp_path / "secret.txt").write_text("no")
    async with web_app(tmp_path, pwa_dir=dist) as web:
        r = await web.client.get("/")
        assert r.status_code == 200 and "RelayPACS" in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        r = await web.client.get("/assets/app-1.js")
        assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
        assert (await web.client.get("/sw.js")).headers["cache-control"] == "no-cache"
        r = await web.client.get("/study/42")  # the app's own routes get the shell
        assert r.status_code == 200 and "RelayPACS" in r.text
        assert (await web.client.get("/missing.js")).status_code == 404
        assert (await web.client.get("/api/v1/nothing")).status_code == 404
        r = await web.client.get("/..%2Fsecret.txt")
        assert r.status_code == 404 and r.text != "no"
    async with web_app(tmp_path / "b", pwa_dir=None) as web:
        r = await web.client.get("/")
        assert r.status_code == 503 and "make pwa" in r.text
