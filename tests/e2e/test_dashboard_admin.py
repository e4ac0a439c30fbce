"""Managing users and agents from the hub dashboard, end to end: headless Chromium (Debian's,
driven by Playwright) against a real hub, and the real agent CLI enrolling with the code the
dashboard showed.

An admin adds a clinician, sees a too-short password refused in the hub's words, disables and
enables her (the hub refuses and then accepts her sign-in), deletes an account after a
confirmation that names it; issues a one-time enrollment code, the agent enrolls with it, and the
admin revokes the agent (the hub then refuses its credential). A radiologist sees none of this.
Screenshots go to ``artifacts/screenshots/``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_pwa import DESKTOP, PHONE, SHOTS
from tests.e2e.test_pwa_a11y import AXE, _violations
from tests.support.browser import chromium, ensure_pwa_built
from tests.support.processes import HubProcess, folder_destinations, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ADMIN_TOKEN = "admin-" + "x" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "Dashboard-admin-passw0rd"
NINA_PASSWORD = "Nina-clinician-passw0rd"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    ensure_pwa_built()
    archive = tmp_path / "archive"
    archive.mkdir()
    destinations = folder_destinations(tmp_path / "destinations.toml", archive)
    proc = HubProcess(
        tmp_path,
        admin_token=ADMIN_TOKEN,
        destinations_file=str(destinations),
        allow_agent_token="false",
    )
    proc.start()
    yield proc
    proc.terminate()


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def _create_user(hub: HubProcess, username: str, role: str, facilities: list[str]) -> None:
    r = httpx.post(
        hub.url + "/api/v1/users",
        headers=ADMIN,
        json={"username": username, "password": PASSWORD, "role": role, "facilities": facilities},
        timeout=10,
    )
    assert r.status_code == 201, r.text


def _users(hub: HubProcess) -> dict[str, dict[str, Any]]:
    r = httpx.get(hub.url + "/api/v1/users", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return {u["username"]: u for u in r.json()}


def _login(hub: HubProcess, username: str, password: str) -> httpx.Response:
    return httpx.post(
        hub.url + "/api/v1/auth/login",
        json={"username": username, "password": password},
        timeout=10,
    )


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _sign_in(page: Any, hub: HubProcess, username: str) -> None:
    page.goto(hub.url + "/dashboard/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("dash-me").wait_for()


def _note(page: Any, text: str) -> None:
    """Wait until the polite live region announces `text`."""
    page.get_by_test_id("dash-admin-note").filter(has_text=text).wait_for()


def _add_user(page: Any, username: str, role: str, facilities: str, password: str) -> None:
    form = page.get_by_test_id("dash-add-user")
    form.get_by_label("Username").fill(username)
    form.get_by_label("Role").select_option(role)
    form.get_by_label("Facilities").fill(facilities)
    form.get_by_label("Initial password").fill(password)
    form.get_by_role("button", name="Add user").click()


def _user_row(page: Any, username: str) -> Any:
    return page.locator(f'[data-testid="dash-user"][data-username="{username}"]')


def test_admin_manages_users_and_agents(hub: HubProcess, browser: Any, tmp_path: Path) -> None:
    assert AXE.is_file(), "run `make npm-deps` (tests/interop) for axe-core"
    _create_user(hub, "ada", "admin", [])
    _create_user(hub, "rad", "radiologist", ["east"])

    ctx = browser.new_context(viewport=DESKTOP, bypass_csp=True)  # bypass_csp: to inject axe
    page = ctx.new_page()
    _sign_in(page, hub, "ada")
    page.get_by_test_id("dash-tab-users").click()
    page.get_by_test_id("dash-add-user").wait_for()
    # ada cannot lock herself out from here.
    assert page.get_by_role("button", name="Disable ada").count() == 0
    assert page.get_by_role("button", name="Delete ada").count() == 0

    # Add a clinician for "east"; the hub has her with that role and facility.
    _add_user(page, "nina", "clinician", " east, ", NINA_PASSWORD)
    _note(page, "User nina added.")
    _user_row(page, "nina").wait_for()
    nina = _users(hub)["nina"]
    assert (nina["role"], nina["facilities"], nina["disabled"]) == ("clinician", ["east"], False)
    row = _user_row(page, "nina")
    assert "clinician" in row.inner_text() and "east" in row.inner_text()
    assert _login(hub, "nina", NINA_PASSWORD).status_code == 200

    # A too-short password: the hint says so, and the hub's refusal is shown in words.
    form = page.get_by_test_id("dash-add-user")
    form.get_by_label("Username").fill("omar")
    form.get_by_label("Initial password").fill("short")
    assert "7 more characters" in form.inner_text()
    form.get_by_role("button", name="Add user").click()
    alert = form.get_by_role("alert")
    alert.wait_for()
    assert "at least 12 characters" in alert.inner_text(), alert.inner_text()
    assert "password" in alert.inner_text()
    assert "omar" not in _users(hub)
    found = {"users": _violations(page)}
    _shot(page, "desktop-dashboard-users-admin")

    # Disable nina: the hub refuses her; enable her again: she signs in.
    page.get_by_role("button", name="Disable nina").click()
    _note(page, "nina disabled")
    page.locator('[data-testid="dash-user"][data-username="nina"][data-disabled="true"]').wait_for()
    assert _users(hub)["nina"]["disabled"] is True
    refused = _login(hub, "nina", NINA_PASSWORD)
    assert refused.status_code == 401, refused.text
    page.get_by_role("button", name="Enable nina").click()
    _note(page, "nina enabled")
    page.locator(
        '[data-testid="dash-user"][data-username="nina"][data-disabled="false"]'
    ).wait_for()
    assert _login(hub, "nina", NINA_PASSWORD).status_code == 200

    # Change role and facilities in a dialog.
    page.get_by_role("button", name="Change role or facilities of nina").click()
    dialog = page.get_by_test_id("dash-edit-user")
    dialog.wait_for()
    found["edit-dialog"] = _violations(page)
    dialog.get_by_label("Role").select_option("radiographer")
    dialog.get_by_label("Facilities").fill("east, west")
    dialog.get_by_role("button", name="Save").click()
    _note(page, "nina is now radiographer for east, west")
    nina = _users(hub)["nina"]
    assert (nina["role"], nina["facilities"]) == ("radiographer", ["east", "west"])

    # A new password: too short is refused in the dialog, a good one works.
    page.get_by_role("button", name="Set a new password for nina").click()
    dialog = page.get_by_test_id("dash-set-password")
    dialog.get_by_label("New password").fill("tiny")
    dialog.get_by_role("button", name="Set password").click()
    assert "at least 12 characters" in dialog.get_by_role("alert").inner_text()
    dialog.get_by_label("New password").fill("Another-nina-passw0rd")
    dialog.get_by_role("button", name="Set password").click()
    _note(page, "New password set for nina")
    assert _login(hub, "nina", NINA_PASSWORD).status_code == 401
    assert _login(hub, "nina", "Another-nina-passw0rd").status_code == 200

    # Delete: the confirmation names the user; Cancel keeps her, confirming deletes her.
    _add_user(page, "temp.user", "clinician", "east", "Temporary-passw0rd")
    _note(page, "User temp.user added.")
    page.get_by_role("button", name="Delete temp.user").click()
    confirm = page.get_by_test_id("dash-confirm-delete")
    confirm.wait_for()
    assert "temp.user" in confirm.inner_text()
    found["delete-dialog"] = _violations(page)
    confirm.get_by_role("button", name="Cancel").click()
    confirm.wait_for(state="detached")
    assert "temp.user" in _users(hub)
    page.get_by_role("button", name="Delete temp.user").click()
    page.get_by_test_id("dash-confirm-delete").get_by_role("button", name="Delete user").click()
    _note(page, "User temp.user deleted.")
    _user_row(page, "temp.user").wait_for(state="detached")
    assert "temp.user" not in _users(hub)

    # Phone: the same list, readable without sideways scrolling.
    phone = browser.new_context(viewport=PHONE, bypass_csp=True)
    ppage = phone.new_page()
    _sign_in(ppage, hub, "ada")
    ppage.get_by_test_id("dash-tab-users").click()
    _user_row(ppage, "nina").wait_for()
    assert ppage.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    assert ppage.get_by_role("button", name="Disable nina").is_visible()
    found["phone-users"] = _violations(ppage)
    _shot(ppage, "phone-dashboard-users")
    phone.close()

    # Enroll an agent: the one-time code and the exact command to run at the facility.
    page.get_by_test_id("dash-tab-agents").click()
    enroll = page.get_by_test_id("dash-enroll-agent")
    enroll.get_by_label("Facility").fill("east")
    enroll.get_by_label("Agent name").fill("east-1")
    enroll.get_by_label("Code valid for (minutes)").fill("30")
    enroll.get_by_role("button", name="Issue enrollment code").click()
    code = page.get_by_test_id("dash-enroll-code").inner_text().strip()
    assert len(code) >= 20, code
    command = page.get_by_test_id("dash-enroll-command").inner_text().strip()
    assert command == (f"relaypacs-agent enroll --hub-url {hub.url} --code {code} --name east-1"), (
        command
    )
    _note(page, "Enrollment code issued for east, valid 30 min")
    page.get_by_role("button", name="Copy command").wait_for()
    found["enroll"] = _violations(page)
    _shot(page, "desktop-dashboard-enroll")

    agent_dir = tmp_path / "agent"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "relaypacs_agent.cli",
            "enroll",
            "--hub-url",
            hub.url,
            "--code",
            code,
            "--name",
            "east-1",
        ],
        env={**os.environ, "RELAYPACS_AGENT_DATA_DIR": str(agent_dir)},
        check=True,
        timeout=120,
    )
    cred = json.loads((agent_dir / "credential.json").read_text())
    bearer = {"Authorization": f"Bearer rpd_{cred['device_id']}.{cred['secret']}"}

    # The code was shown once: after a reload it is gone, and the agent is listed.
    page.reload()
    page.get_by_test_id("dash-agents").wait_for()
    agent_row = page.locator('[data-testid="dash-agent"][data-name="east-1"]')
    agent_row.wait_for()
    assert page.get_by_test_id("dash-enroll-code").count() == 0
    assert "east" in agent_row.inner_text()

    # Revoke, after a confirmation naming the agent: the hub refuses its credential.
    page.get_by_role("button", name="Revoke agent east-1").click()
    confirm = page.get_by_test_id("dash-confirm-revoke")
    assert "east-1" in confirm.inner_text()
    found["revoke-dialog"] = _violations(page)
    confirm.get_by_role("button", name="Revoke agent").click()
    _note(page, "Agent east-1 revoked")
    page.locator('[data-testid="dash-agent"][data-name="east-1"][data-revoked="true"]').wait_for()
    assert page.get_by_role("button", name="Revoke agent east-1").count() == 0
    renew = wait_for(
        lambda: (
            r
            if (
                r := httpx.post(hub.url + "/api/v1/devices/renew", headers=bearer, timeout=10)
            ).status_code
            != 200
            else None
        ),
        10,
        "the revoked credential to be refused",
    )
    assert renew.status_code == 401, renew.text
    ctx.close()

    # A radiologist sees neither tab, and the hub would refuse the calls anyway.
    rctx = browser.new_context(viewport=DESKTOP)
    rpage = rctx.new_page()
    _sign_in(rpage, hub, "rad")
    rpage.get_by_test_id("dash-tab-overview").wait_for()
    for tab in ("users", "agents", "dead"):
        assert rpage.get_by_test_id(f"dash-tab-{tab}").count() == 0
    assert rpage.get_by_test_id("dash-add-user").count() == 0
    rctx.close()

    assert {k: v for k, v in found.items() if v} == {}


def _device(hub: HubProcess, facility: str) -> dict[str, str]:
    code = httpx.post(
        hub.url + "/api/v1/devices/enrollment-codes", headers=ADMIN, json={"facility": facility}
    ).json()["code"]
    r = httpx.post(
        hub.url + "/api/v1/devices/enroll", json={"code": code, "name": f"agent-{facility}"}
    )
    assert r.status_code in (200, 201), r.text
    body = r.json()
    return {"Authorization": f"Bearer rpd_{body['device_id']}.{body['secret']}"}


def _send_second(hub: HubProcess, path: Path, first: dict[str, str], second: dict[str, str]) -> str:
    """Clinic A sends one instance of a study; clinic B then announces the same study."""
    import hashlib

    import pydicom

    from relaypacs_shared.wire import format_content_digest

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uid, data = ds.StudyInstanceUID, path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    r = httpx.put(
        f"{hub.url}/api/v1/studies/{uid}/instances/{ds.SOPInstanceUID}",
        content=data,
        headers={**first, "Content-Type": "application/dicom",
                 "Content-Digest": format_content_digest(sha)},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    entry = {"sop_instance_uid": ds.SOPInstanceUID, "series_instance_uid": ds.SeriesInstanceUID,
             "sha256": sha, "size": len(data)}  # fmt: skip
    r = httpx.post(
        f"{hub.url}/api/v1/studies/{uid}/manifest", json={"instances": [entry]}, headers=second
    )
    assert r.status_code == 409 and r.json()["code"] == "study_held", r.text
    return str(uid)


def test_admin_decides_on_studies_a_second_facility_sent(
    hub: HubProcess, browser: Any, tmp_path: Path
) -> None:
    from relaypacs_dev.generate import generate_study

    _create_user(hub, "ada", "admin", [])
    north, south = _device(hub, "north"), _device(hub, "south")
    studies = [
        generate_study(tmp_path / f"s{i}", instances=1, seed=60 + i, rows=64, columns=64)
        for i in range(2)
    ]
    accepted = _send_second(hub, studies[0].files[0], north, south)
    refused = _send_second(hub, studies[1].files[0], north, south)
    ctx = browser.new_context(viewport=DESKTOP, bypass_csp=True)  # bypass_csp: to inject axe
    page = ctx.new_page()
    _sign_in(page, hub, "ada")
    page.get_by_role("tab", name="Agents").click()
    claims = page.get_by_test_id("dash-claims")
    claims.filter(has_text="2 waiting for a decision").wait_for()
    _shot(page, "dashboard-held-studies-desktop")
    assert page.get_by_test_id("dash-claim").first.inner_text().count("agent-south") == 1
    rows = page.get_by_test_id("dash-claim")
    rows.filter(has_text=accepted).get_by_role("button", name="Accept study for south").click()
    _note(page, "Accepted for south")
    rows.filter(has_text=refused).get_by_role("button", name="Refuse study for south").click()
    dialog = page.get_by_test_id("dash-refuse-claim")
    dialog.get_by_label("Reason shown at the facility").fill("UID clash: export it again")
    dialog.get_by_role("button", name="Refuse study").click()
    _note(page, "Refused for south")
    states = {
        c["study_instance_uid"]: (c["state"], c["decided_by"], c["reason"])
        for c in httpx.get(hub.url + "/api/v1/study-claims", headers=ADMIN).json()
    }
    assert states == {
        accepted: ("accepted", "ada", ""),
        refused: ("refused", "ada", "UID clash: export it again"),
    }
    claims.filter(has_text="0 waiting for a decision").wait_for()
    assert _violations(page) == []
