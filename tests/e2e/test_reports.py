"""The report loop end to end, all real: a hub process delivering to a real Orthanc, an enrolled
agent process reaching the hub through a link the test can cut (the WAN), and the PWA in
Debian's Chromium.

A nurse sends a study from the PWA; a reporting system then stores reports into Orthanc by
STOW-RS (a preliminary SR with a CT dose SR, then a final SR with an Encapsulated PDF, then an
amending SR). The study card shows "Report ready" with each status as it changes, live; the
report's text renders and its PDF opens; the dose SR is never a report. With the WAN down when a
report appears, the PWA shows it once the link is back; with the WAN down later, the agent still
shows every report it holds."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from relaypacs_dev.generate import generate_study
from relaypacs_dev.reports import dose_sr, encapsulated_pdf, minimal_pdf, text_sr
from tests.support.browser import chromium, ensure_pwa_built
from tests.support.orthanc import OrthancServer, free_port, orthanc_available
from tests.support.processes import AgentProcess, HubProcess, wait_for
from tests.support.reports import stow
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
ADMIN_TOKEN = "admin-" + "r" * 40
PASSWORD = "Report-loop-passw0rd"
PHONE = {"width": 390, "height": 844}


@dataclass
class Stack:
    orthanc: OrthancServer
    hub: HubProcess
    agent: AgentProcess
    wan: TcpProxy
    web_url: str

    def hub_reports(self, study_uid: str) -> dict[str, Any]:
        r = httpx.get(
            f"{self.hub.url}/api/v1/studies/{study_uid}/reports",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def delivered(self, study_uid: str) -> bool:
        r = httpx.get(
            f"{self.hub.url}/api/v1/studies/{study_uid}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        return r.status_code == 200 and all(d["state"] == "done" for d in r.json()["destinations"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not orthanc_available():
        pytest.skip("needs /usr/sbin/Orthanc and the DICOMweb plugin")
    ensure_pwa_built()
    workdir = tmp_path_factory.mktemp("reports")
    with OrthancServer() as orthanc:
        destinations = workdir / "destinations.toml"
        destinations.write_text(
            f'[[destinations]]\nname = "pacs"\ntype = "dicomweb"\nprofile = "orthanc"\n'
            f'url = "{orthanc.dicomweb_url}"\n'
        )
        hub = HubProcess(
            workdir,
            admin_token=ADMIN_TOKEN,
            destinations_file=str(destinations),
            allow_agent_token="false",
            report_poll_seconds="1",
            report_poll_stat_seconds="0.5",
        )
        hub.start()
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=hub.url, headers=admin) as c:
            for name, role in [("nurse", "clinician"), ("reader", "radiologist")]:
                r = c.post(
                    "/api/v1/users",
                    json={"username": name, "password": PASSWORD, "role": role,
                          "facilities": ["north"]},
                )  # fmt: skip
                assert r.status_code == 201, r.text
            code = c.post("/api/v1/devices/enrollment-codes", json={"facility": "north"})
        wan = TcpProxy("127.0.0.1", hub.port).start()
        env = {**os.environ, "RELAYPACS_AGENT_DATA_DIR": str(workdir / "agent")}
        subprocess.run(
            [sys.executable, "-m", "relaypacs_agent.cli", "enroll", "--hub-url", wan.url,
             "--code", code.json()["code"], "--name", "reports-test"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        web_port = free_port()
        agent = AgentProcess(
            workdir,
            wan.url,
            web_port=str(web_port),
            web_host="127.0.0.1",
            quiet_period_seconds="1",
            report_feed_wait_seconds="5",
        )
        agent.start()
        web_url = f"http://127.0.0.1:{web_port}"
        wait_for(
            lambda: _json(web_url + "/api/v1/info").get("hub", {}).get("reachable"),
            30,
            "the agent's web app reaching the hub",
        )
        try:
            yield Stack(orthanc, hub, agent, wan, web_url)
        finally:
            agent.terminate()
            hub.terminate()
            wan.close()


def _json(url: str) -> dict[str, Any]:
    try:
        body: dict[str, Any] = httpx.get(url, timeout=2).json()
        return body
    except (httpx.HTTPError, ValueError):
        return {}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def _login(page: Any, url: str, username: str) -> None:
    page.goto(url + "/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("new-upload").wait_for()


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _lan_session(stack: Stack, username: str) -> dict[str, str]:
    r = httpx.post(
        stack.web_url + "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_reports_stored_in_the_pacs_show_live_in_the_pwa(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    study = generate_study(tmp_path / "ct", instances=4, rows=32, columns=32, seed=1501)
    uid = study.study_instance_uid
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    _login(page, stack.web_url, "nurse")
    page.get_by_test_id("new-upload").click()
    page.get_by_test_id("pick-files").set_input_files([str(f) for f in study.files])
    page.get_by_label("Clinical history").first.fill("headache, query bleed")
    page.get_by_role("radio", name="STAT").first.check()
    page.get_by_role("button", name="Send").click()
    card = page.locator('[data-testid="study-card"][data-stage="pacs"]')
    card.wait_for(timeout=90_000)
    nurse = _lan_session(stack, "nurse")
    r = httpx.get(f"{stack.web_url}/api/v1/studies/{uid}/report", headers=nurse)
    assert r.status_code == 404 and r.json()["code"] == "no_report"

    # A preliminary read and the scanner's dose SR: the card says "preliminary", live.
    stow(
        stack.orthanc.dicomweb_url,
        text_sr(uid, findings="Preliminary: no intracranial bleed.", status="preliminary"),
        dose_sr(uid),
    )
    badge = page.locator('[data-testid="report-badge"]')
    page.locator('[data-testid="report-badge"][data-status="preliminary"]').wait_for(timeout=30_000)
    assert badge.inner_text() == "Report ready · Preliminary"
    _shot(page, "phone-report-preliminary")

    # The final report, as an SR and as a PDF.
    pdf = minimal_pdf(["CT head", "No acute intracranial abnormality."])
    final_sr = text_sr(
        uid, findings="No acute intracranial abnormality.", impression="Normal CT head."
    )
    stow(stack.orthanc.dicomweb_url, final_sr, encapsulated_pdf(uid, pdf))
    page.locator('[data-testid="report-badge"][data-status="final"]').wait_for(timeout=30_000)
    card.get_by_role("link").click()
    report = page.get_by_test_id("report")
    report.wait_for()
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=report-pdf]').length === 1"
    )
    assert page.get_by_test_id("report-status").inner_text() == "Final"
    text = page.get_by_test_id("report-text").inner_text()
    assert "No acute intracranial abnormality." in text and "Normal CT head." in text
    _shot(page, "phone-report-final")
    with (
        ctx.expect_page() as popup_info,
        page.expect_response(lambda r: r.url.endswith("/document")) as served,
    ):
        page.get_by_test_id("report-pdf").click()
    assert served.value.status == 200
    assert served.value.headers["content-type"] == "application/pdf"
    document = httpx.get(stack.web_url + served.value.url.split(stack.web_url, 1)[1], headers=nurse)
    assert document.content == pdf  # the PDF the agent keeps, byte for byte
    popup = popup_info.value
    popup.wait_for_function("() => location.href.startsWith('blob:')")
    assert popup.evaluate("document.contentType") == "application/pdf"
    popup.close()

    # An amendment naming the final SR as its predecessor.
    first = pydicom.dcmread(io.BytesIO(final_sr))
    stow(
        stack.orthanc.dicomweb_url,
        text_sr(
            uid,
            findings="Addendum: 3 mm left frontal contusion on review.",
            predecessor=(first.SeriesInstanceUID, first.SOPInstanceUID),
        ),
    )
    page.locator('[data-testid="report"][data-status="amended"]').wait_for(timeout=30_000)
    assert "contusion" in page.get_by_test_id("report-text").inner_text()
    assert page.get_by_test_id("report-status").inner_text() == "Amended"
    _shot(page, "phone-report-amended")

    # The dose SR never became a report, at the hub or at the agent.
    hub_side = stack.hub_reports(uid)
    assert hub_side["report_status"] == "amended"
    assert sorted(r["kind"] for r in hub_side["reports"]) == ["pdf", "sr", "sr", "sr"]
    body = httpx.get(f"{stack.web_url}/api/v1/studies/{uid}/report", headers=nurse).json()
    assert body["status"] == "amended" and len(body["reports"]) == 4
    assert all("Dose" not in r["title"] for r in body["reports"])
    ctx.close()


def test_wan_down_when_the_report_appears_then_later(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    study = generate_study(tmp_path / "ct2", instances=3, rows=32, columns=32, seed=1502)
    uid = study.study_instance_uid
    for f in study.files:  # the modality's folder at the facility
        (stack.agent.inbox / f.name).write_bytes(f.read_bytes())
    wait_for(lambda: stack.delivered(uid), 90, "the study delivered to the PACS")
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    _login(page, stack.web_url, "nurse")
    page.goto(f"{stack.web_url}/#/report/{uid}")
    page.get_by_text("There is no report for this study at the agent yet.").wait_for()

    stack.wan.cut()
    stow(stack.orthanc.dicomweb_url, text_sr(uid, findings="Chest clear. No effusion."))
    wait_for(lambda: stack.hub_reports(uid)["report_status"] == "final", 30, "the hub's report")
    # The link is cut: the agent cannot have it, and the PWA shows none.
    r = httpx.get(
        f"{stack.web_url}/api/v1/studies/{uid}/report", headers=_lan_session(stack, "nurse")
    )
    assert r.status_code == 404
    assert page.get_by_test_id("report").count() == 0
    stack.wan.restore()
    page.locator('[data-testid="report"][data-status="final"]').wait_for(timeout=30_000)
    assert "Chest clear" in page.get_by_test_id("report-text").inner_text()

    # Later the WAN goes down again: the clinician still reads the report on the LAN.
    stack.wan.cut()
    try:
        page.reload()
        page.locator('[data-testid="report"][data-status="final"]').wait_for(timeout=15_000)
        assert "Chest clear" in page.get_by_test_id("report-text").inner_text()
        page.goto(stack.web_url + "/#/")
        note = page.locator(f'[data-testid="report-list"] a[href="#/report/{uid}"]')
        note.wait_for()
        _shot(page, "phone-report-wan-down")
    finally:
        stack.wan.restore()
    ctx.close()


def test_a_push_makes_the_service_worker_show_a_notification(stack: Stack, browser: Any) -> None:
    ctx = browser.new_context(viewport=PHONE)
    ctx.grant_permissions(["notifications"], origin=stack.web_url)
    page = ctx.new_page()
    _login(page, stack.web_url, "nurse")
    page.evaluate("async () => { await navigator.serviceWorker.ready }")
    cdp = ctx.new_cdp_session(page)
    registrations: list[dict[str, Any]] = []
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated",
        lambda e: registrations.extend(e["registrations"]),
    )
    cdp.send("ServiceWorker.enable")
    for _ in range(100):  # Playwright delivers CDP events while it waits
        if any(r["scopeURL"].startswith(stack.web_url) for r in registrations):
            break
        page.wait_for_timeout(100)
    reg = next(r for r in registrations if r["scopeURL"].startswith(stack.web_url))
    # What the hub sends: an opaque id and the status, nothing about the patient.
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {
            "origin": stack.web_url + "/",
            "registrationId": reg["registrationId"],
            "data": '{"kind": "report", "id": 42, "status": "final"}',
        },
    )
    shown = page.evaluate(
        """async () => {
            const reg = await navigator.serviceWorker.ready
            for (let i = 0; i < 100; i++) {
                const n = await reg.getNotifications()
                if (n.length) return n.map((x) => ({ title: x.title, body: x.body, tag: x.tag }))
                await new Promise((r) => setTimeout(r, 100))
            }
            return []
        }"""
    )
    assert shown == [
        {
            "title": "RelayPACS: report ready",
            "body": "A report is ready. Open RelayPACS to read it.",
            "tag": "report-42",
        }
    ]
    ctx.close()
