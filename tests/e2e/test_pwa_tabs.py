"""Several tabs of the upload app on one device run one queue: the tab holding the queue lock
uploads, the others show the same studies from IndexedDB. The agent sees one batch and one upload
per file (several queues made duplicate batches and uploaded files twice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import test_pwa as pwa
from tests.e2e.test_pwa import DESKTOP, _login, _pick_and_describe, _progress, _study, _throttle
from tests.support.processes import wait_for

PACS = '[data-testid="study-card"][data-stage="pacs"]'

# The same real agent + hub stack and browser as the PWA tests (one per module).
stack = pwa.stack
browser = pwa.browser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_two_tabs_upload_each_file_once(stack: pwa.Stack, browser: Any, tmp_path: Path) -> None:
    r = httpx.post(
        stack.hub.url + "/api/v1/users",
        headers={"Authorization": f"Bearer {pwa.ADMIN_TOKEN}"},
        json={"username": "tabs", "password": pwa.PASSWORD, "role": "clinician",
              "facilities": ["north"]},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    study = _study(tmp_path, "ct", 12, seed=711, size=512)  # ~6 MB

    ctx = browser.new_context(viewport=DESKTOP)
    first = ctx.new_page()
    _login(first, stack.web_url, "tabs")
    _pick_and_describe(first, study.files)
    _throttle(first, 400_000)
    first.get_by_role("button", name="Send").click()
    wait_for(lambda: 5 < _progress(first) < 60, 60, "the upload to be under way")

    # A second tab (same session, same IndexedDB) shows the study without uploading it too.
    second = ctx.new_page()
    second.goto(stack.web_url + "/")
    second.get_by_test_id("study-card").first.wait_for(timeout=20_000)
    wait_for(lambda: _progress(second) > 0, 20, "the second tab to show the progress")

    # Both stay open until the study is in the PACS; each shows it there.
    for page in (first, second):
        page.locator(PACS).first.wait_for(timeout=120_000)
        assert page.get_by_test_id("study-card").count() == 1
    ctx.close()

    pwa._delivered(stack, study)
    with stack.agent_db() as db:
        batches = db.execute("SELECT id FROM web_batches WHERE created_by = 'tabs'").fetchall()
        uploads = db.execute(
            "SELECT state, sop_instance_uid FROM web_uploads WHERE created_by = 'tabs'"
        ).fetchall()
        marks = ",".join("?" * len(study.sop_instance_uids))
        dups = db.execute(
            f"SELECT COUNT(*) FROM duplicates WHERE sop_instance_uid IN ({marks})",
            study.sop_instance_uids,
        ).fetchone()[0]
    assert len(batches) == 1, "one batch at the agent, not one per tab"
    assert len(uploads) == len(study.files), "each file uploaded once, not once per tab"
    assert {u["state"] for u in uploads} == {"done"}
    assert sorted(u["sop_instance_uid"] for u in uploads) == sorted(study.sop_instance_uids)
    assert dups == 0
