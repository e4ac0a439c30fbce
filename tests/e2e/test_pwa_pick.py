"""Picking a zip and a folder in the PWA, end to end: headless Chromium against the real agent and
hub of ``test_pwa``. The zip is read in the browser without loading it into memory (its entries are
slices of the picked file or inflated one by one); junk inside it is skipped, non-DICOM files are
refused in words; every image reaches the archive byte for byte, once."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs_dev.generate import generate_study
from tests.e2e import test_pwa as pwa
from tests.e2e.test_pwa import PHONE, Stack, _delivered, _login, _no_duplicates, _shot

# The same real agent + hub stack and browser as the PWA tests (one per module).
stack = pwa.stack
browser = pwa.browser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PACS = '[data-testid="study-card"][data-stage="pacs"]'

# Records every text the "Reading…" status line shows, however briefly.
WATCH_STATUS = """() => {
  window.__statusSeen = []
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('[role="status"]')) {
      const t = el.textContent.trim()
      if (t && !window.__statusSeen.includes(t)) window.__statusSeen.push(t)
    }
  }).observe(document.body, { subtree: true, childList: true, characterData: true })
}"""


def _new_user(stack: Stack, username: str) -> None:
    """A user only these tests use, so the study cards on Home are only theirs."""
    r = httpx.post(
        stack.hub.url + "/api/v1/users",
        headers={"Authorization": f"Bearer {pwa.ADMIN_TOKEN}"},
        json={
            "username": username,
            "password": pwa.PASSWORD,
            "role": "radiographer",
            "facilities": ["north"],
        },
    )
    assert r.status_code == 201, r.text


def _sign_in_and_start(page: Any, stack: Stack, username: str) -> None:
    # The agent does not know the user yet: it refreshes its verifiers from the hub at sign-in.
    _login(page, stack.web_url, username)
    page.get_by_test_id("new-upload").click()
    page.get_by_test_id("pick-files").wait_for(state="attached")


def test_zip_pick_is_read_in_the_browser_and_delivered(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    _new_user(stack, "zipuser")
    study = generate_study(
        tmp_path / "ct", modality="CT", instances=8, seed=811, rows=64, columns=64
    )
    archive = tmp_path / "CT export.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("EXPORT/", "")
        for f in study.files:
            z.write(f, "EXPORT/" + f.relative_to(tmp_path / "ct").as_posix())
        z.writestr("EXPORT/README.txt", "Exported by the modality.\n")
        z.writestr("__MACOSX/EXPORT/._README.txt", b"\0\5\26\7 apple double")
        z.writestr("EXPORT/.DS_Store", b"Bud1 finder")

    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    _sign_in_and_start(page, stack, "zipuser")
    page.evaluate(WATCH_STATUS)
    page.get_by_test_id("pick-zip").set_input_files(str(archive))

    review = page.get_by_test_id("review-study")
    review.first.wait_for()
    assert review.count() == 1
    assert "8 images" in review.get_by_test_id("review-counts").inner_text()
    refused = page.get_by_test_id("refused-file")
    assert refused.count() == 1, refused.all_inner_texts()
    assert "CT export.zip/EXPORT/README.txt" in refused.inner_text()
    assert "is not a DICOM image" in refused.inner_text()
    seen = page.evaluate("window.__statusSeen")
    assert any(t.startswith("Reading the zip… ") and t.endswith(" of 9 files") for t in seen), seen
    _shot(page, "phone-zip-review")

    page.get_by_role("button", name="Send").click()
    page.locator(PACS).first.wait_for(timeout=90_000)
    assert page.get_by_test_id("study-card").count() == 1
    _shot(page, "phone-zip-delivered")
    _delivered(stack, study)
    _no_duplicates(stack, study)
    ctx.close()


def test_folder_pick_with_two_studies_is_delivered(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    _new_user(stack, "folderuser")
    folder = tmp_path / "USB"
    ct = generate_study(folder / "ct", modality="CT", instances=5, seed=812, rows=64, columns=64)
    mr = generate_study(folder / "mr", modality="MR", instances=4, seed=813, rows=64, columns=64)
    (folder / ".DS_Store").write_bytes(b"Bud1 finder")
    (folder / "DICOMDIR").write_bytes(b"index")

    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    _sign_in_and_start(page, stack, "folderuser")
    # Playwright hands a directory to a webkitdirectory input as the browser would.
    page.get_by_test_id("pick-folder").set_input_files(str(folder))

    review = page.get_by_test_id("review-study")
    review.first.wait_for()
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=review-study]').length === 2"
    )
    counts = sorted(review.get_by_test_id("review-counts").all_inner_texts())
    assert [c.split(",")[1].strip() for c in counts] == ["4 images", "5 images"], counts
    assert page.get_by_test_id("refused-file").count() == 0  # junk and DICOMDIR left out
    _shot(page, "phone-folder-review")

    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        f"() => document.querySelectorAll('{PACS}').length === 2", timeout=90_000
    )
    assert page.get_by_test_id("study-card").count() == 2
    _shot(page, "phone-folder-delivered")
    for s in (ct, mr):
        _delivered(stack, s)
        _no_duplicates(stack, s)
    ctx.close()
