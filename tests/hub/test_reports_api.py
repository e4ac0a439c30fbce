"""Reports through the hub's API: a radiologist posts text, a DICOM SR or a PDF; the study's
status moves preliminary → final → amended with its times; the facility's agent reads it in its
feed (long poll with a cursor); other facilities see nothing; bad reports are refused in words."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from relaypacs_dev.generate import generate_study
from relaypacs_dev.reports import dose_sr, encapsulated_pdf, minimal_pdf, text_sr
from relaypacs_hub.audit import read_log
from relaypacs_hub.auth import devices
from tests.hub.authfix import ADMIN_TOKEN, add_user, auth_settings, bearer, hub_client


async def _device(app: Any, facility: str) -> dict[str, str]:
    sm = app.state.hub.sessionmaker
    code, _ = await devices.issue_code(sm, "test", facility, 10)
    device, secret = await devices.enroll(sm, code, f"agent-{facility}")
    return bearer(devices.credential(device.id, secret))


async def _send_study(
    client: httpx.AsyncClient, device: dict[str, str], tmp: Path, level: str = "routine"
) -> str:
    import hashlib

    import pydicom

    from relaypacs_shared.wire import format_content_digest

    study = generate_study(tmp, instances=2, rows=16, columns=16, seed=7)
    manifest = []
    for path in study.files:
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        digest = hashlib.sha256(data).hexdigest()
        r = await client.put(
            f"/api/v1/studies/{ds.StudyInstanceUID}/instances/{ds.SOPInstanceUID}",
            content=data,
            headers={**device, "Content-Digest": format_content_digest(digest)},
        )
        assert r.status_code == 201, r.text
        manifest.append({"sop_instance_uid": str(ds.SOPInstanceUID), "sha256": digest})
    r = await client.post(
        f"/api/v1/studies/{study.study_instance_uid}/commit",
        json={
            "instances": manifest,
            "received_at": "2026-12-05T01:00:00Z",
            "service_level": level,
        },
        headers=device,
    )
    assert r.status_code == 200, r.text
    return study.study_instance_uid


async def test_post_text_then_sr_then_amendment_reach_the_facility_feed(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        fac_a = await _device(app, "fac-a")
        fac_b = await _device(app, "fac-b")
        study_uid = await _send_study(client, fac_a, tmp_path / "s")
        await add_user(app, "rad", "radiologist", ["fac-a"])
        await add_user(app, "rad-b", "radiologist", ["fac-b"])
        issuer = app.state.hub.auth.issuer
        rad = bearer(issuer.issue("rad", "radiologist", ["fac-a"]))
        rad_b = bearer(issuer.issue("rad-b", "radiologist", ["fac-b"]))

        r = await client.get(f"/api/v1/studies/{study_uid}/reports", headers=fac_a)
        assert r.json()["report_status"] == "none" and r.json()["reports"] == []
        r = await client.post(
            f"/api/v1/studies/{study_uid}/reports",
            json={"text": "x", "status": "amended"},
            headers=rad,
        )
        assert r.status_code == 409 and "no final report" in r.json()["detail"]

        # A long poll started before the report arrives returns when it does.
        poll = asyncio.create_task(
            client.get("/api/v1/reports/feed", params={"after": 0, "wait": 20}, headers=fac_a)
        )
        await asyncio.sleep(0.3)
        assert not poll.done()
        r = await client.post(
            f"/api/v1/studies/{study_uid}/reports",
            json={"text": "Preliminary: no bleed.", "status": "preliminary"},
            headers=rad,
        )
        assert r.status_code == 201, r.text
        assert r.json()["study"]["report_status"] == "preliminary"
        feed = (await asyncio.wait_for(poll, 5)).json()
        assert [e["report"]["status"] for e in feed["events"]] == ["preliminary"]
        assert feed["events"][0]["report"]["text"] == "Preliminary: no bleed."
        cursor = feed["cursor"]

        # The final report as a DICOM SR, then an amending SR naming it as predecessor.
        sr = text_sr(study_uid, findings="No acute intracranial haemorrhage.", status="final")
        r = await client.post(
            f"/api/v1/studies/{study_uid}/reports",
            content=sr,
            headers={**rad, "Content-Type": "application/dicom"},
        )
        assert r.status_code == 201, r.text
        final = r.json()
        assert final["study"]["report_status"] == "final"
        assert final["study"]["time_to_report_seconds"] > 0
        import pydicom

        first = pydicom.dcmread(__import__("io").BytesIO(sr))
        amended = text_sr(
            study_uid,
            findings="Small left subdural haematoma, 4 mm.",
            predecessor=(first.SeriesInstanceUID, first.SOPInstanceUID),
        )
        r = await client.post(
            f"/api/v1/studies/{study_uid}/reports",
            content=amended,
            headers={**rad, "Content-Type": "application/dicom"},
        )
        assert r.json()["study"]["report_status"] == "amended"

        feed = (
            await client.get("/api/v1/reports/feed", params={"after": cursor}, headers=fac_a)
        ).json()
        assert [e["report"]["status"] for e in feed["events"]] == ["final", "amended"]
        assert "subdural" in feed["events"][1]["report"]["text"]
        # Another facility's agent sees none of it, and may not read the study's reports.
        other = (await client.get("/api/v1/reports/feed", headers=fac_b)).json()
        assert other["events"] == []
        r = await client.get(f"/api/v1/studies/{study_uid}/reports", headers=fac_b)
        assert r.status_code == 403
        # A radiologist of another facility may not report on it.
        r = await client.post(
            f"/api/v1/studies/{study_uid}/reports", json={"text": "x"}, headers=rad_b
        )
        assert r.status_code == 403

        body = (await client.get(f"/api/v1/studies/{study_uid}/reports", headers=rad)).json()
        assert body["report_status"] == "amended"
        assert body["preliminary_at"] and body["final_at"] and body["amended_at"]
        assert [x["status"] for x in body["reports"]] == ["amended", "final", "preliminary"]
        # The same SR posted again is not a second report.
        r = await client.post(
            f"/api/v1/studies/{study_uid}/reports",
            content=sr,
            headers={**rad, "Content-Type": "application/dicom"},
        )
        assert r.status_code == 201
        after = (
            await client.get("/api/v1/reports/feed", params={"after": cursor}, headers=fac_a)
        ).json()
        assert len(after["events"]) == 2


MALFORMED_WORDS = "content could not be read (cut short or damaged)"


async def test_pdf_report_and_refusals(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (app, client):
        fac_a = await _device(app, "fac-a")
        study_uid = await _send_study(client, fac_a, tmp_path / "s")
        admin = bearer(ADMIN_TOKEN)
        pdf = minimal_pdf(["CT head", "Impression: normal."])
        r = await client.post(
            f"/api/v1/studies/{study_uid}/reports",
            content=encapsulated_pdf(study_uid, pdf),
            headers={**admin, "Content-Type": "application/dicom"},
        )
        assert r.status_code == 201, r.text
        report = r.json()["report"]
        assert report["kind"] == "pdf" and report["has_content"]
        r = await client.get(f"/api/v1/reports/{report['id']}/content", headers=fac_a)
        assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
        assert r.content == pdf
        # Every read of a report is audited: who, which study.
        reads = [
            rec.record
            async for rec in read_log(app.state.hub.sessionmaker)
            if rec.record.action == "report.read"
        ]
        assert reads and reads[-1].target == study_uid

        good_sr = text_sr(study_uid, findings="x")
        cases = [
            # A malformed SR: cut short inside its content.
            (good_sr[: len(good_sr) - 60], "application/dicom", 422, MALFORMED_WORDS),
            (dose_sr(study_uid), "application/dicom", 422, "X-Ray Radiation Dose SR is not a"),
            (dose_sr(study_uid, comprehensive=True), "application/dicom", 422, "dose report"),
            (encapsulated_pdf(study_uid, b"GIF89a..."), "application/dicom", 422, "not a PDF"),
            (b"<html>not a pdf</html>", "application/pdf", 422, "not a PDF"),
            (b"\x00" * 300, "application/dicom", 422, "lacks its SOP Class"),
            (text_sr("1.2.3.4", findings="x"), "application/dicom", 422, "another study"),
            (b"{}", "application/json", 422, "text"),
            (b"hello", "text/plain", 415, "application/json"),
        ]
        for body, ctype, code, words in cases:
            r = await client.post(
                f"/api/v1/studies/{study_uid}/reports",
                content=body,
                headers={**admin, "Content-Type": ctype},
            )
            assert r.status_code == code, (ctype, r.text)
            assert words in r.json()["detail"], r.text
        r = await client.post(
            "/api/v1/studies/1.2.3.999/reports", json={"text": "x"}, headers=admin
        )
        assert r.status_code == 404 and r.json()["code"] == "unknown_study"
        # "amended" after a final report is accepted.
        r = await client.post(
            f"/api/v1/studies/{study_uid}/reports",
            json={"text": "x", "status": "amended"},
            headers=admin,
        )
        assert r.status_code == 201  # the PDF above was final: this is an amendment
        assert r.json()["study"]["report_status"] == "amended"
