"""Accessibility of the PWA's main screens, checked by axe-core (the engine behind Lighthouse's
accessibility audit) inside Debian's Chromium against the real agent and hub: no serious or
critical violation (labels, names, contrast, landmarks, ARIA) at phone and desktop sizes.
Keyboard use is checked too: the sign-in form works from the keyboard alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relaypacs_dev.generate import generate_study
from tests.e2e import test_pwa as pwa
from tests.e2e.test_pwa import DESKTOP, PASSWORD, PHONE, Stack, _login, _shot

# The same real agent + hub stack and browser as the PWA tests (one per module).
stack = pwa.stack
browser = pwa.browser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

AXE = Path(__file__).resolve().parents[1] / "interop" / "node_modules" / "axe-core" / "axe.min.js"


def _violations(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_upload_app_screens_have_no_serious_violations(
    stack: Stack, browser: Any, tmp_path: Path, viewport: dict[str, int]
) -> None:
    assert AXE.is_file(), "run `make npm-deps` (tests/interop) for axe-core"
    study = generate_study(tmp_path / "ct", instances=2, seed=801, rows=32, columns=32)
    ctx = browser.new_context(viewport=viewport, bypass_csp=True)  # to inject axe
    page = ctx.new_page()
    page.goto(stack.web_url + "/")
    page.get_by_label("Username").wait_for()
    found = {"sign-in": _violations(page)}
    _login(page, stack.web_url, "nurse")
    page.get_by_test_id("new-upload").wait_for()
    found["home"] = _violations(page)
    page.get_by_test_id("new-upload").click()
    page.get_by_test_id("pick-files").set_input_files([str(f) for f in study.files])
    page.get_by_test_id("review-study").first.wait_for()
    found["review"] = _violations(page)
    ctx.close()
    assert {k: v for k, v in found.items() if v} == {}


def test_dashboard_screens_have_no_serious_violations(stack: Stack, browser: Any) -> None:
    ctx = browser.new_context(viewport=DESKTOP, bypass_csp=True)  # to inject axe
    page = ctx.new_page()
    page.goto(f"http://127.0.0.1:{stack.hub_port}/dashboard/")
    page.get_by_label("Username").wait_for()
    found = {"sign-in": _violations(page)}
    page.get_by_label("Username").fill("boss")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    for tab in ("overview", "studies", "dead", "agents", "users"):
        page.get_by_test_id(f"dash-tab-{tab}").click()
        page.wait_for_load_state("networkidle")
        found[tab] = _violations(page)
    _shot(page, "desktop-dashboard-users")
    ctx.close()
    assert {k: v for k, v in found.items() if v} == {}


def test_sign_in_works_from_the_keyboard_alone(stack: Stack, browser: Any) -> None:
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    page.goto(stack.web_url + "/")
    page.get_by_label("Username").wait_for()
    page.keyboard.press("Tab")
    for _ in range(10):  # header controls may come first
        if page.evaluate("() => document.activeElement?.getAttribute('name')") == "username":
            break
        page.keyboard.press("Tab")
    page.keyboard.type("nurse")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.get_by_test_id("new-upload").wait_for()
    # Focus is visible: the focused control draws an outline or a ring.
    page.keyboard.press("Tab")
    style = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return s.outlineStyle + '|' + s.boxShadow; }"
    )
    assert style.split("|")[0] != "none" or style.split("|")[1] != "none", style
    ctx.close()


def test_the_upload_app_is_installable(stack: Stack) -> None:
    """What a browser needs to offer "Install app": a manifest with a name, a start URL, a
    standalone display and 192/512 px icons that exist, and a service worker."""
    import httpx

    manifest = httpx.get(stack.web_url + "/manifest.webmanifest")
    assert manifest.status_code == 200
    m = manifest.json()
    assert m["name"].startswith("RelayPACS") and m["short_name"]
    assert m["display"] in ("standalone", "fullscreen", "minimal-ui")
    assert m["start_url"]
    sizes = {i["sizes"] for i in m["icons"]}
    assert {"192x192", "512x512"} <= sizes
    assert any("maskable" in i.get("purpose", "") for i in m["icons"])
    for icon in m["icons"]:
        r = httpx.get(stack.web_url + "/" + icon["src"].lstrip("./"))
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/"), icon
    sw = httpx.get(stack.web_url + "/sw.js")
    assert sw.status_code == 200 and "javascript" in sw.headers["content-type"]
    index = httpx.get(stack.web_url + "/").text
    assert "manifest.webmanifest" in index
