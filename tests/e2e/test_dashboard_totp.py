"""Two-factor sign-in in the hub dashboard, end to end: headless Chromium (Debian's, driven by
Playwright) against a real hub that requires TOTP of radiologists.

A radiologist without a second factor gets an enroll-only session and sees only the enrollment
screen; they scan (here: read) the secret, confirm a code, get 10 recovery codes, and sign in
again with a 6-digit code. A wrong code is refused in words, and a recovery code works once.
Screenshots of the enrollment screen go to ``artifacts/screenshots/``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from tests.e2e.test_pwa import DESKTOP, PHONE, SHOTS
from tests.e2e.test_pwa_a11y import AXE, _violations
from tests.support.browser import chromium, ensure_pwa_built
from tests.support.processes import HubProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ADMIN_TOKEN = "admin-" + "f" * 40
PASSWORD = "Dashboard-2FA-passw0rd"
ENROLL_SENTENCE = "Your role needs a second factor. Set it up to continue."


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    ensure_pwa_built()
    proc = HubProcess(
        tmp_path_factory.mktemp("dashboard-totp"),
        admin_token=ADMIN_TOKEN,
        require_totp_roles="radiologist",
        allow_agent_token="false",
    )
    proc.start()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def _user(hub: HubProcess, username: str, role: str = "radiologist") -> None:
    r = httpx.post(
        hub.url + "/api/v1/users",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"username": username, "password": PASSWORD, "role": role, "facilities": []},
        timeout=10,
    )
    assert r.status_code in (200, 201), r.text


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _sign_in(page: Any, hub: HubProcess, username: str) -> None:
    page.goto(hub.url + "/dashboard/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def _second_factor(page: Any, *, code: str | None = None, recovery: str | None = None) -> None:
    """Answer the dashboard's second-factor question (asked after the password)."""
    page.get_by_label("6-digit code").wait_for()
    if recovery is not None:
        page.get_by_role("button", name="Use a recovery code instead").click()
        page.get_by_label("Recovery code").fill(recovery)
    else:
        page.get_by_label("6-digit code").fill(code)
    page.get_by_role("button", name="Sign in").click()


def _start_enrollment(page: Any) -> str:
    """From the enroll-only screen to the QR step; returns the secret as shown (no spaces)."""
    page.get_by_text(ENROLL_SENTENCE).wait_for()
    page.get_by_role("button", name="Set up two-factor sign-in").click()
    shown = page.get_by_test_id("totp-secret").inner_text()
    secret = "".join(shown.split())
    assert shown.split(" ")[0] == secret[:4], shown  # grouped in fours
    return secret


def _confirm(page: Any, secret: str) -> list[str]:
    page.get_by_label("Code from your app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Confirm").click()
    codes = page.get_by_test_id("recovery-codes").locator("li")
    codes.first.wait_for()
    return [c.strip() for c in codes.all_inner_texts()]


def _enroll(page: Any, hub: HubProcess, username: str) -> tuple[str, list[str]]:
    _user(hub, username)
    _sign_in(page, hub, username)
    secret = _start_enrollment(page)
    codes = _confirm(page, secret)
    page.get_by_role("button", name="Sign in again").click()
    page.get_by_label("Username").wait_for()
    return secret, codes


def _wrong_code(secret: str) -> str:
    t = pyotp.TOTP(secret)
    now = int(time.time())
    valid = {t.at(now + d) for d in (-60, -30, 0, 30, 60)}
    return next(c for c in (f"{n:06d}" for n in range(0, 10**6, 7919)) if c not in valid)


def _error(page: Any) -> str:
    alert = page.get_by_role("alert")
    alert.wait_for()
    return alert.inner_text()


def test_radiologist_enrolls_then_signs_in_with_the_next_code(
    hub: HubProcess, browser: Any
) -> None:
    assert AXE.is_file(), "run `make npm-deps` (tests/interop) for axe-core"
    ctx = browser.new_context(viewport=DESKTOP, bypass_csp=True)  # to inject axe
    page = ctx.new_page()
    _user(hub, "rad-a")
    _sign_in(page, hub, "rad-a")

    # Enroll-only session: the sentence, no tabs, no data views.
    page.get_by_text(ENROLL_SENTENCE).wait_for()
    assert page.get_by_role("tab").count() == 0
    assert page.get_by_test_id("dash-overview").count() == 0
    found = {"enroll": _violations(page)}

    secret = _start_enrollment(page)
    assert len(secret) >= 16
    assert page.get_by_role("img", name="QR code for your authenticator app").is_visible()
    # Focus moved to the new step's heading.
    focused = page.evaluate("() => document.activeElement?.textContent")
    assert focused == "Scan the code with your authenticator app"
    found["scan"] = _violations(page)
    _shot(page, "desktop-dashboard-totp-enroll")

    codes = _confirm(page, secret)
    assert len(codes) == 10 and len(set(codes)) == 10, codes
    assert page.get_by_text("These codes are shown once.").is_visible()
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download").click()
    text = Path(dl.value.path()).read_text()
    assert dl.value.suggested_filename.endswith(".txt")
    assert all(c in text.splitlines() for c in codes)
    found["codes"] = _violations(page)

    # The enroll-only token can do nothing more: sign in again, now with a code.
    page.get_by_role("button", name="Sign in again").click()
    page.get_by_label("Username").fill("rad-a")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    # The confirming code is used up: the next step's code (the hub accepts one step ahead).
    _second_factor(page, code=pyotp.TOTP(secret).at(int(time.time()) + 30))
    page.get_by_test_id("dash-tab-studies").click()
    page.get_by_test_id("dash-studies-table").wait_for()
    assert page.get_by_text(ENROLL_SENTENCE).count() == 0
    assert page.get_by_test_id("dash-me").inner_text().startswith("rad-a")

    # The Security tab now says two-factor sign-in is already on (409 from the hub).
    page.get_by_test_id("dash-tab-security").click()
    page.get_by_role("button", name="Set up two-factor sign-in").click()
    page.get_by_test_id("totp-already").wait_for()
    found["security"] = _violations(page)
    ctx.close()
    assert {k: v for k, v in found.items() if v} == {}


def test_wrong_code_is_refused_in_words_and_a_recovery_code_works_once(
    hub: HubProcess, browser: Any
) -> None:
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    secret, codes = _enroll(page, hub, "rad-b")

    # (b) A wrong 6-digit code: refused, with a sentence, still on the sign-in form.
    _sign_in(page, hub, "rad-b")
    _second_factor(page, code=_wrong_code(secret))
    assert "not accepted" in _error(page)
    assert page.get_by_test_id("dash-tab-studies").count() == 0

    # (c) A recovery code signs in once...
    page.get_by_role("button", name="Use a recovery code instead").click()
    page.get_by_label("Recovery code").fill(codes[3])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("dash-tab-studies").click()
    page.get_by_test_id("dash-studies-table").wait_for()
    page.get_by_role("button", name="Sign out").click()

    # ...and is refused the second time.
    _sign_in(page, hub, "rad-b")
    _second_factor(page, recovery=codes[3])
    assert "recovery code was not accepted" in _error(page)
    assert page.get_by_test_id("dash-tab-studies").count() == 0
    ctx.close()


def test_enrollment_screen_on_a_phone(hub: HubProcess, browser: Any) -> None:
    ctx = browser.new_context(viewport=PHONE, bypass_csp=True)
    page = ctx.new_page()
    _user(hub, "rad-phone")
    _sign_in(page, hub, "rad-phone")
    _start_enrollment(page)
    page.get_by_label("Code from your app").wait_for()
    found = _violations(page)
    _shot(page, "phone-dashboard-totp-enroll")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    ctx.close()
    assert found == []
    assert width <= PHONE["width"], "the enrollment screen scrolls sideways on a phone"
