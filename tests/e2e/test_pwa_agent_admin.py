"""The PWA's Agent page, end to end: the facility's IT admin sees from a phone that nothing is
lost. Files dropped into the agent's watched folder that are not images (a text file) or are cut
short (an interrupted copy) land in quarantine; the admin's Agent page counts them by reason in
plain words and lists each file with where it came from. A clinician sees no Agent link and the
agent refuses her the quarantine list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs_dev.generate import generate_study
from tests.e2e import test_pwa as pwa
from tests.e2e.test_pwa_a11y import AXE, _violations
from tests.support.processes import wait_for

# The same real agent + hub stack and browser as the PWA tests (one per module).
stack = pwa.stack
browser = pwa.browser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _token(stack: pwa.Stack, username: str) -> str:
    r = httpx.post(
        stack.web_url + "/api/v1/auth/login",
        json={"username": username, "password": pwa.PASSWORD},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _quarantined_names(stack: pwa.Stack, token: str) -> set[str]:
    r = httpx.get(
        stack.web_url + "/api/v1/quarantine",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return {e["original_name"] for e in r.json()["entries"]}


def test_admin_sees_quarantined_files_with_their_reasons(
    stack: pwa.Stack, browser: Any, tmp_path: Path
) -> None:
    r = httpx.post(
        stack.hub.url + "/api/v1/users",
        headers={"Authorization": f"Bearer {pwa.ADMIN_TOKEN}"},
        json={"username": "itadmin", "password": pwa.PASSWORD, "role": "admin",
              "facilities": ["north"]},
    )  # fmt: skip
    assert r.status_code == 201, r.text

    # A referral letter and an interrupted copy of an image, dropped into the watched folder.
    study = generate_study(tmp_path / "ct", instances=1, seed=901, rows=64, columns=64)
    data = study.files[0].read_bytes()
    assert len(data) > 6000
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "referral.txt").write_text("Please image the skull. Thanks.\n")
    (staged / "cut-short.dcm").write_bytes(data[:-3000])
    for f in staged.iterdir():
        f.rename(stack.agent.inbox / f.name)  # whole files only, as a copy tool would

    token = _token(stack, "itadmin")
    wait_for(
        lambda: {"referral.txt", "cut-short.dcm"} <= _quarantined_names(stack, token),
        60,
        "both files to be quarantined",
    )

    ctx = browser.new_context(
        viewport=pwa.PHONE, device_scale_factor=2, is_mobile=True, has_touch=True,
        bypass_csp=True,  # to inject axe
    )  # fmt: skip
    page = ctx.new_page()
    pwa._login(page, stack.web_url, "itadmin")
    page.get_by_test_id("agent-link").click()
    page.get_by_test_id("agent-page").wait_for()
    totals = page.get_by_test_id("agent-totals")
    totals.wait_for(timeout=20_000)
    assert int(page.get_by_test_id("agent-quarantined").inner_text()) >= 2
    text = totals.inner_text()
    assert "Not a DICOM file" in text, text
    assert "Cut short" in text, text
    assert "Every file is accounted for" in page.get_by_test_id("agent-summary").inner_text()
    rows = page.get_by_test_id("quarantine-list").get_by_test_id("quarantine-entry")
    listed = "\n".join(rows.all_inner_texts())
    for name in ("referral.txt", "cut-short.dcm"):
        assert name in listed, listed
    referral = rows.filter(has_text="referral.txt").first
    assert "Not a DICOM file" in referral.inner_text()
    assert "Folder" in referral.inner_text()  # folder:inbox, in words
    assert "Cut short" in rows.filter(has_text="cut-short.dcm").first.inner_text()
    assert "relaypacs-agent quarantine" in page.get_by_test_id("agent-page").inner_text()
    pwa._shot(page, "phone-agent-admin")
    if AXE.is_file():  # axe-core from tests/interop (`make npm-deps`)
        assert _violations(page) == []
    ctx.close()

    # A clinician: no Agent link, and the agent refuses her its quarantine list and status.
    ctx = browser.new_context(viewport=pwa.PHONE)
    page = ctx.new_page()
    pwa._login(page, stack.web_url, "nurse")
    page.get_by_test_id("new-upload").wait_for()
    assert page.get_by_test_id("agent-link").count() == 0
    page.goto(stack.web_url + "/#/agent")
    page.get_by_test_id("new-upload").wait_for()
    assert page.get_by_test_id("agent-page").count() == 0
    ctx.close()
    nurse = {"Authorization": f"Bearer {_token(stack, 'nurse')}"}
    assert httpx.get(stack.web_url + "/api/v1/quarantine", headers=nurse).status_code == 403
    assert httpx.get(stack.web_url + "/api/v1/status", headers=nurse).status_code == 403
