"""The PWA end to end: headless Chromium (Debian's, driven by Playwright) against a real agent
(LAN web app) and a real hub (folder destination), with the agent enrolled for its facility and
people logging in at the agent with verifiers it cached from the hub.

Screenshots of the main screens at phone and desktop sizes are written to
``artifacts/screenshots/`` as the run goes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs_dev.generate import GeneratedStudy, generate_study
from tests.e2e.helpers import archive_files
from tests.support.browser import chromium, ensure_pwa_built
from tests.support.orthanc import free_port
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
ADMIN_TOKEN = "admin-" + "e" * 40
PASSWORD = "LAN-login-passw0rd"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}


@dataclass
class Stack:
    workdir: Path
    hub: HubProcess
    agent: AgentProcess
    archive: Path
    web_url: str
    hub_port: int

    def agent_db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.agent.data_dir / 'agent.db'}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        return conn

    def start_hub(self) -> None:
        self.hub = _hub(self.workdir, self.archive, self.hub_port)
        self.hub.start()


def _hub(workdir: Path, archive: Path, port: int) -> HubProcess:
    destinations = folder_destinations(workdir / "destinations.toml", archive)
    return HubProcess(
        workdir,
        port=port,
        admin_token=ADMIN_TOKEN,
        destinations_file=str(destinations),
        allow_agent_token="false",
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ensure_pwa_built()
    workdir = tmp_path_factory.mktemp("pwa")
    archive = workdir / "archive"
    archive.mkdir()
    hub_port = free_port()
    hub = _hub(workdir, archive, hub_port)
    hub.start()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=hub.url, headers=admin) as c:
        for name, role, fac in [
            ("nurse", "clinician", ["north"]),
            ("tech", "radiographer", ["north"]),
            ("nurse2", "clinician", ["north"]),
            ("tech2", "radiographer", ["north", "east"]),
            ("southnurse", "clinician", ["south"]),
            ("reader", "radiologist", []),
            ("boss", "admin", []),
        ]:
            r = c.post(
                "/api/v1/users",
                json={"username": name, "password": PASSWORD, "role": role, "facilities": fac},
            )
            assert r.status_code == 201, r.text
        code = c.post("/api/v1/devices/enrollment-codes", json={"facility": "north"})
        assert code.status_code == 201, code.text
    env = {
        **os.environ,
        "RELAYPACS_AGENT_DATA_DIR": str(workdir / "agent"),
        "RELAYPACS_AGENT_HUB_URL": hub.url,
    }
    subprocess.run(
        [sys.executable, "-m", "relaypacs_agent.cli", "enroll", "--hub-url", hub.url,
         "--code", code.json()["code"], "--name", "pwa-test"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    web_port = free_port()
    agent = AgentProcess(
        workdir,
        hub.url,
        web_port=str(web_port),
        web_host="127.0.0.1",
        quiet_period_seconds="30",  # the PWA's "send" must be what sends
    )
    agent.start()
    web_url = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: _answers(web_url + "/api/v1/info"), 30, "the agent's web app")
    wait_for(
        lambda: httpx.get(web_url + "/api/v1/info").json()["hub"]["reachable"],
        30,
        "the agent to reach the hub",
    )
    s = Stack(workdir, hub, agent, archive, web_url, hub_port)
    yield s
    agent.terminate()
    if s.hub.alive():
        s.hub.terminate()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def _study(tmp: Path, name: str, instances: int, seed: int, size: int = 64) -> GeneratedStudy:
    return generate_study(
        tmp / name, modality="CT", instances=instances, seed=seed, rows=size, columns=size
    )


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _login(page: Any, url: str, username: str) -> None:
    page.goto(url + "/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def _pick_and_describe(page: Any, files: list[Path], level: str = "STAT") -> None:
    page.get_by_test_id("new-upload").click()
    page.get_by_test_id("pick-files").set_input_files([str(f) for f in files])
    page.get_by_label("Clinical history").first.fill("fall from height, query skull fracture")
    page.get_by_label("Referring clinician").first.fill("Dr Ama Mensah")
    page.get_by_role("radio", name=level).first.check()


def _throttle(page: Any, bytes_per_s: int) -> None:
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 20, "downloadThroughput": -1,
         "uploadThroughput": bytes_per_s},
    )  # fmt: skip


def _progress(page: Any) -> float:
    bar = page.get_by_test_id("study-progress").first
    value = bar.get_attribute("aria-valuenow") if bar.count() else None
    return float(value) if value else 0.0


def _delivered(stack: Stack, study: GeneratedStudy) -> None:
    found = archive_files(stack.archive)
    for sop, f in zip(study.sop_instance_uids, study.files, strict=True):
        assert sop in found, f"{sop} not in the archive"
        assert found[sop].read_bytes() == f.read_bytes()


def _no_duplicates(stack: Stack, study: GeneratedStudy) -> None:
    with stack.agent_db() as db:
        n = db.execute(
            "SELECT COUNT(*) FROM instances WHERE study_instance_uid = ?",
            (study.study_instance_uid,),
        ).fetchone()[0]
        marks = ",".join("?" * len(study.sop_instance_uids))
        dups = db.execute(
            f"SELECT COUNT(*) FROM duplicates WHERE sop_instance_uid IN ({marks})",
            study.sop_instance_uids,
        ).fetchone()[0]
        uploads = db.execute(
            f"SELECT COUNT(*) FROM web_uploads WHERE sop_instance_uid IN ({marks})",
            study.sop_instance_uids,
        ).fetchone()[0]
    assert n == len(study.files)
    assert dups == 0, "a file was sent twice"
    assert uploads == len(study.files), "a file was uploaded more than once"


def test_study_uploaded_with_metadata_is_seen_in_the_pacs(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    study = _study(tmp_path, "ct", 6, seed=701)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    page.goto(stack.web_url + "/")
    _shot(page, "phone-login")
    _login(page, stack.web_url, "nurse")
    page.get_by_test_id("new-upload").wait_for()
    _shot(page, "phone-home")
    _pick_and_describe(page, [*study.files, notes])
    refused = page.get_by_test_id("refused-file")
    refused.first.wait_for()
    assert "notes.txt" in refused.first.inner_text()
    assert "not a DICOM" in refused.first.inner_text()
    _shot(page, "phone-review")
    page.get_by_role("button", name="Send").click()
    card = page.locator('[data-testid="study-card"][data-stage="pacs"]')
    card.first.wait_for(timeout=90_000)
    _shot(page, "phone-delivered")
    _delivered(stack, study)
    _no_duplicates(stack, study)
    with stack.agent_db() as db:
        row = db.execute(
            "SELECT service_level, metadata FROM studies WHERE study_instance_uid = ?",
            (study.study_instance_uid,),
        ).fetchone()
        # The non-DICOM file never became a study: it is nowhere but refused in the browser.
        assert row["service_level"] == "stat"
        assert "query skull fracture" in row["metadata"] and "Dr Ama Mensah" in row["metadata"]
    ctx.close()

    desk = browser.new_context(viewport=DESKTOP)
    page = desk.new_page()
    _login(page, stack.web_url, "nurse")
    page.locator('[data-testid="study-card"]').first.wait_for()
    _shot(page, "desktop-home")
    # The hub's dashboard shows the study delivered, with its time to PACS.
    page.goto(f"http://127.0.0.1:{stack.hub_port}/dashboard/")
    page.get_by_label("Username").fill("boss")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("dash-tab-studies").click()
    row = page.locator(f'[data-testid="dash-study-row"] [title="{study.study_instance_uid}"]')
    row.wait_for(timeout=20_000)
    delivered = page.locator('[data-testid="dash-study-row"][data-state="delivered"]')
    assert delivered.count() >= 1
    # What the nurse wrote on the phone reaches the reader, with the study.
    clinical = page.locator(
        f'[data-testid="dash-study-row"]:has([title="{study.study_instance_uid}"]) '
        '[data-testid="dash-clinical"]'
    )
    assert "query skull fracture" in clinical.inner_text()
    assert "Dr Ama Mensah" in clinical.inner_text()
    _shot(page, "desktop-dashboard-studies")
    desk.close()


def test_offline_mid_upload_completes_without_duplicates(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    study = _study(tmp_path, "ct", 12, seed=702, size=512)  # ~6 MB
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    _login(page, stack.web_url, "tech")
    _pick_and_describe(page, study.files, level="Routine")
    _throttle(page, 400_000)
    page.get_by_role("button", name="Send").click()
    wait_for(lambda: _progress(page) > 5, 60, "the upload to start")
    ctx.set_offline(True)
    page.get_by_test_id("offline-banner").wait_for(timeout=20_000)
    _shot(page, "phone-offline-waiting")
    time.sleep(3)
    ctx.set_offline(False)
    page.locator('[data-testid="study-card"][data-stage="pacs"]').first.wait_for(timeout=120_000)
    _delivered(stack, study)
    _no_duplicates(stack, study)
    ctx.close()


def test_reload_mid_upload_resumes_without_picking_again(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    study = _study(tmp_path, "ct", 12, seed=703, size=512)
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    _login(page, stack.web_url, "nurse2")
    _pick_and_describe(page, study.files)
    _throttle(page, 400_000)
    page.get_by_role("button", name="Send").click()
    wait_for(lambda: 5 < _progress(page) < 80, 60, "the upload to be under way")
    page.reload()
    _throttle(page, 2_000_000)
    page.locator('[data-testid="study-card"][data-stage="pacs"]').first.wait_for(timeout=120_000)
    _delivered(stack, study)
    _no_duplicates(stack, study)
    ctx.close()


def test_app_loads_offline(stack: Stack, browser: Any) -> None:
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    page.goto(stack.web_url + "/")
    page.evaluate("async () => { await navigator.serviceWorker.ready; }")
    page.reload()  # now controlled by the service worker
    wait_for(lambda: page.evaluate("() => !!navigator.serviceWorker.controller"), 20,
             "the service worker to control the page")  # fmt: skip
    ctx.set_offline(True)
    page.reload()
    page.get_by_role("button", name="Sign in").wait_for(timeout=20_000)
    _shot(page, "phone-offline-app")
    ctx.close()


def test_lan_login_and_upload_with_the_hub_down_delivered_when_it_returns(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    study = _study(tmp_path, "ct", 4, seed=704)
    stack.hub.terminate()
    wait_for(
        lambda: not httpx.get(stack.web_url + "/api/v1/info").json()["hub"]["reachable"],
        30,
        "the agent to notice the hub is gone",
    )
    # Someone of another facility cannot log in here, hub or no hub: the agent never even
    # received their verifier.
    r = httpx.post(stack.web_url + "/api/v1/auth/login",
                   json={"username": "southnurse", "password": PASSWORD})  # fmt: skip
    assert r.status_code == 401
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    _login(page, stack.web_url, "tech2")
    _pick_and_describe(page, study.files)
    page.get_by_role("button", name="Send").click()
    page.locator('[data-testid="study-card"][data-stage="agent"]').first.wait_for(timeout=60_000)
    _shot(page, "phone-waiting-at-agent")
    with stack.agent_db() as db:
        held = db.execute(
            "SELECT COUNT(*) FROM instances WHERE study_instance_uid = ?",
            (study.study_instance_uid,),
        ).fetchone()[0]
        assert held == len(study.files)
        login = db.execute(
            "SELECT details FROM audit_log WHERE action = 'lan.login' AND actor = 'tech2' "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        assert '"offline":true' in login["details"].replace(" ", "")
    stack.start_hub()
    page.locator('[data-testid="study-card"][data-stage="pacs"]').first.wait_for(timeout=120_000)
    _delivered(stack, study)
    ctx.close()


def test_shared_device_keeps_each_users_queue_to_themselves(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    study = _study(tmp_path, "ct", 3, seed=705)
    patient = "PATIENT0705"  # in the generated patient name; the ID is SYNTHETIC-000705
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    # The nurse queues a study while the tablet is offline, then signs out.
    _login(page, stack.web_url, "nurse")
    page.get_by_test_id("new-upload").wait_for()
    _pick_and_describe(page, study.files)
    ctx.set_offline(True)
    page.get_by_role("button", name="Send").click()
    page.locator('[data-testid="study-card"][data-stage="device"]').first.wait_for(timeout=20_000)
    assert patient in page.content()
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for(timeout=10_000)
    assert patient not in page.content() and "000705" not in page.content()
    ctx.set_offline(False)

    # The radiographer signs in on the same tablet: a count, never the nurse's study.
    _login(page, stack.web_url, "tech")
    others = page.get_by_test_id("others-waiting")
    others.wait_for(timeout=20_000)
    assert others.inner_text() == (
        "1 study of another user is waiting on this device; it continues when that user signs in."
    )
    time.sleep(2)  # give the queue time to (wrongly) pick it up
    html = page.content()
    assert patient not in html and "000705" not in html
    assert page.locator('[data-testid="study-card"][data-stage="device"]').count() == 0
    with stack.agent_db() as db:
        n = db.execute(
            "SELECT COUNT(*) FROM instances WHERE study_instance_uid = ?",
            (study.study_instance_uid,),
        ).fetchone()[0]
    assert n == 0, "another user's files were uploaded"
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for(timeout=10_000)

    # The nurse signs in again: nothing was lost, the study goes on to the PACS.
    _login(page, stack.web_url, "nurse")
    page.get_by_test_id("new-upload").wait_for()
    assert page.get_by_test_id("others-waiting").count() == 0
    in_pacs = page.locator('[data-testid="study-card"]:not([data-stage="pacs"])')
    wait_for(
        lambda: (
            set(study.sop_instance_uids) <= set(archive_files(stack.archive))
            and in_pacs.count() == 0
        ),
        120,
        "the nurse's study to reach the PACS",
    )
    _delivered(stack, study)
    _no_duplicates(stack, study)
    ctx.close()


def test_logs_hold_no_patient_data_of_the_pwa_uploads(stack: Stack) -> None:
    """Runs last in this module: after every upload above, neither the agent's nor the hub's log
    holds a patient name or ID of the studies sent from the browser (SYNTHETIC^PATIENT07xx,
    SYNTHETIC-0007xx), nor the clinical history typed in the form."""
    logs = (stack.workdir / "agent.log").read_text() + (stack.workdir / "hub.log").read_text()
    assert "lan_upload_taken" in logs  # the uploads did log, without their content
    for leak in ("SYNTHETIC^", "PATIENT07", "SYNTHETIC-0007", "skull fracture", "Ama Mensah"):
        assert leak not in logs, leak


def test_a_study_with_one_refused_file_says_what_happened_and_the_counts_add_up(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    """1 of 6 files is cut short in its pixel data (the browser reads only headers, so only the
    agent sees it): the study must not read "In the PACS 100%" / "Nothing more to do", and the
    refusal is in plain words with what to do, not the element arithmetic."""
    study = _study(tmp_path, "cut", 6, seed=709, size=512)  # 524288 bytes of pixels each
    cut = study.files[-1]
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - (524288 - 297952)])
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    _login(page, stack.web_url, "tech")
    page.get_by_test_id("new-upload").wait_for()
    _pick_and_describe(page, study.files, level="Routine")
    page.get_by_role("button", name="Send").click()
    # Earlier tests' studies are on the page too: this one is the card that counts a refusal.
    card = page.locator('[data-testid="study-card"][data-stage="pacs"]').filter(
        has=page.get_by_test_id("study-stage").filter(has_text="refused")
    )
    card.wait_for(timeout=120_000)
    found = archive_files(stack.archive)
    assert sum(sop in found for sop in study.sop_instance_uids) == 5
    assert study.sop_instance_uids[-1] not in found  # the cut file is the one left out
    stage = card.get_by_test_id("study-stage")
    assert stage.inner_text() == "In the PACS: 5 of 6 files, 1 refused"
    assert "100%" not in card.inner_text()
    _shot(page, "phone-delivered-with-refusal")

    card.get_by_role("link").click()
    outcome = page.get_by_test_id("study-outcome")
    outcome.wait_for(timeout=30_000)
    assert outcome.inner_text() == (
        "5 of 6 files are in the PACS; 1 was refused and is not in the PACS. See below what "
        "happened and what to do, then send that file again as a new upload."
    )
    main = page.locator("main").inner_text()
    assert "Nothing more to do" not in main
    refused = page.get_by_test_id("refused-file")
    assert refused.count() == 1
    text = refused.first.inner_text()
    assert cut.name in text
    assert "cut short" in text and "Copy or export the file again" in text
    assert "declares" not in text  # the technical detail is folded away for IT
    page.get_by_text("Technical detail for IT").click()
    assert "declares 524288 bytes but only 297952 remain" in refused.first.inner_text()
    assert "5 accepted, 0 already held, 1 refused, of 6 expected" in main
    _shot(page, "phone-study-with-refusal")
    ctx.close()
