"""No agent nearby: the upload app served by the hub (``/upload/``) sends straight to the hub,
end to end in headless Chromium against a real hub with a folder destination. A user with TOTP
signs in, picks a generated study and sends it: manifest, one tus segment per instance the hub
lacks (Upload-Checksum on every PATCH), commit. What reaches the destination is byte-identical;
the same study sent again crosses nothing; a reload mid-upload resumes where the hub stands."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pyotp
import pytest

from relaypacs_dev.generate import GeneratedStudy, generate_study
from tests.e2e.helpers import archive_files
from tests.support.browser import PWA_DIST, chromium, ensure_pwa_built
from tests.support.processes import HubProcess, folder_destinations, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ADMIN_TOKEN = "admin-" + "d" * 40
PASSWORD = "Direct-upload-passw0rd"
DESKTOP = {"width": 1366, "height": 900}


@dataclass
class Hub:
    proc: HubProcess
    archive: Path
    secrets: dict[str, pyotp.TOTP] = field(default_factory=dict)

    @property
    def app(self) -> str:
        return self.proc.url + "/upload/"


def _with_totp(hub: HubProcess, name: str, facilities: list[str]) -> pyotp.TOTP:
    """A user who turned TOTP on (as tests/hub/test_direct_upload.py does, over HTTP)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=hub.url) as c:
        r = c.post(
            "/api/v1/users",
            json={"username": name, "password": PASSWORD, "role": "radiographer",
                  "facilities": facilities},
            headers=admin,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        r = c.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        who = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = c.post("/api/v1/auth/totp/enroll", headers=who)
        assert r.status_code == 200, r.text
        otp = pyotp.parse_uri(r.json()["provisioning_uri"])
        assert isinstance(otp, pyotp.TOTP)
        r = c.post("/api/v1/auth/totp/confirm", json={"code": otp.now()}, headers=who)
        assert r.status_code == 200, r.text
    return otp


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    ensure_pwa_built()
    workdir = tmp_path_factory.mktemp("direct")
    archive = workdir / "archive"
    archive.mkdir()
    proc = HubProcess(
        workdir,
        admin_token=ADMIN_TOKEN,
        destinations_file=str(folder_destinations(workdir / "destinations.toml", archive)),
        allow_agent_token="false",
        pwa_dir=str(PWA_DIST),
        # Access tokens of 72 s: the app refreshes them (a minute ahead) in the middle of uploads.
        access_token_minutes="1.2",
    )
    proc.start()
    h = Hub(proc, archive)
    h.secrets["ward"] = _with_totp(proc, "ward", ["north"])
    h.secrets["flying"] = _with_totp(proc, "flying", ["north", "east"])
    # One user per test: a TOTP code opens one session only, twice in 30 s is refused.
    h.secrets["ambulance"] = _with_totp(proc, "ambulance", ["north"])
    yield h
    proc.terminate()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


class Traffic:
    """The tus requests the page makes (creations, PATCHes with their offsets and checksums)."""

    def __init__(self, page: Any) -> None:
        self.creations: list[str] = []
        self.refreshes = 0
        self.patches: list[tuple[str, int, int, str]] = []  # url, offset, bytes, checksum
        page.on("request", self._seen)

    def _seen(self, req: Any) -> None:
        if req.url.endswith("/api/v1/auth/refresh"):
            self.refreshes += 1
        if "/api/v1/uploads" not in req.url:
            return
        if req.method == "POST":
            self.creations.append(req.url)
        elif req.method == "PATCH":
            h = req.headers
            body = req.post_data_buffer or b""
            self.patches.append(
                (req.url, int(h["upload-offset"]), len(body), h.get("upload-checksum", ""))
            )

    @property
    def patched_bytes(self) -> int:
        return sum(n for _, _, n, _ in self.patches)


def _sign_in(page: Any, hub: Hub, name: str) -> None:
    page.goto(hub.app)
    target = page.get_by_test_id("target")
    target.wait_for()
    assert target.inner_text() == "Sending straight to the hub"
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    # The code of the next 30 s window: the one used to confirm enrollment is not taken twice.
    page.get_by_label("6-digit code").fill(hub.secrets[name].at(int(time.time()) + 30))
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("new-upload").wait_for(timeout=20_000)


def _send(page: Any, files: list[Path], level: str = "STAT") -> None:
    page.get_by_test_id("new-upload").click()
    page.get_by_test_id("pick-files").set_input_files([str(f) for f in files])
    page.get_by_label("Clinical history").first.fill("fall from height, query skull fracture")
    page.get_by_label("Referring clinician").first.fill("Dr Ama Mensah")
    page.get_by_role("radio", name=level).first.check()
    page.get_by_role("button", name="Send").click()


def _committed(page: Any, n: int) -> None:
    """n study cards are at the hub (committed)."""
    cards = page.locator('[data-testid="study-card"][data-stage="hub"]')
    wait_for(lambda: cards.count() >= n, 120, f"{n} studies committed at the hub")


def _delivered(hub: Hub, study: GeneratedStudy) -> None:
    def there() -> bool:
        found = archive_files(hub.archive)
        return all(s in found for s in study.sop_instance_uids)

    wait_for(there, 60, "the study in the destination folder")
    found = archive_files(hub.archive)
    for sop, f in zip(study.sop_instance_uids, study.files, strict=True):
        assert found[sop].read_bytes() == f.read_bytes(), f"{sop} differs from the original"


def test_a_study_sent_straight_to_the_hub_arrives_byte_identical_and_never_twice(
    hub: Hub, browser: Any, tmp_path: Path
) -> None:
    study = generate_study(tmp_path / "ct", modality="CT", instances=6, seed=1701, rows=96,
                           columns=96)  # fmt: skip
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    traffic = Traffic(page)
    _sign_in(page, hub, "ward")
    _send(page, study.files)
    _committed(page, 1)
    _delivered(hub, study)
    # One upload per instance, each PATCH with the SHA-256 of its own bytes.
    assert len(traffic.creations) == len(study.files)
    assert traffic.patches and all(c.startswith("sha256 ") for *_, c in traffic.patches)
    for *_, c in traffic.patches:
        assert len(base64.b64decode(c.split(" ", 1)[1])) == 32
    state = page.get_by_test_id("hub-study-state").first
    state.wait_for(timeout=30_000)

    # The same study again: the manifest answers that the hub holds it all; nothing is uploaded.
    sent = traffic.patched_bytes
    creations = len(traffic.creations)
    _send(page, study.files, level="Routine")
    _committed(page, 2)
    assert len(traffic.creations) == creations, "an instance the hub holds was uploaded again"
    assert traffic.patched_bytes == sent
    ctx.close()


def test_several_facilities_pick_one_first(hub: Hub, browser: Any, tmp_path: Path) -> None:
    study = generate_study(tmp_path / "mr", modality="MR", instances=2, seed=1702, rows=32,
                           columns=32)  # fmt: skip
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    page.goto(hub.app)
    page.get_by_label("Username").fill("flying")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("6-digit code").fill(hub.secrets["flying"].at(int(time.time()) + 30))
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("choose-facility").wait_for(timeout=20_000)
    page.get_by_test_id("facility-picker").select_option("east")
    assert page.get_by_test_id("facility").inner_text() == "east"
    _send(page, study.files)
    _committed(page, 1)
    _delivered(hub, study)
    r = httpx.get(
        f"{hub.proc.url}/api/v1/studies/{study.study_instance_uid}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert r.status_code == 200, r.text
    ctx.close()


def test_reload_mid_upload_resumes_where_the_hub_stands(
    hub: Hub, browser: Any, tmp_path: Path
) -> None:
    # 10 x 512 KB (about 170 KB each once DEFLATEd) over a 50 KB/s link, 64 KB PATCHes.
    study = generate_study(tmp_path / "big", modality="CT", instances=10, seed=1703, rows=512,
                           columns=512)  # fmt: skip
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    traffic = Traffic(page)
    _sign_in(page, hub, "ambulance")
    page.evaluate("localStorage.setItem('relaypacs.chunkSize', String(64 * 1024))")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 20, "downloadThroughput": -1, "uploadThroughput": 50_000},
    )
    _send(page, study.files)
    # Playwright delivers request events only while it is called: wait through the page.
    wait_for(
        lambda: page.wait_for_timeout(100) or len(traffic.patches) >= 4, 60, "an upload under way"
    )
    before = {u for u, *_ in traffic.patches}
    seen = len(traffic.patches)
    page.reload()
    _committed(page, 1)
    _delivered(hub, study)
    resumed = [p for p in traffic.patches[seen:] if p[0] in before and p[1] > 0]
    assert resumed, "no upload went on from where the hub stood after the reload"
    assert len(traffic.creations) == len(study.files), "an upload was started over"
    assert traffic.refreshes >= 1, "the access token was not refreshed during the upload"
    ctx.close()


def test_a_study_another_facility_sent_is_held_and_the_browser_keeps_it(
    hub: Hub, browser: Any, tmp_path: Path
) -> None:
    study = generate_study(tmp_path / "theirs", modality="CT", instances=2, seed=1704, rows=32,
                           columns=32)  # fmt: skip
    # Facility east's agent declared this study first: it is east's.
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=hub.proc.url) as c:
        code = c.post("/api/v1/devices/enrollment-codes", json={"facility": "east"}, headers=admin)
        assert code.status_code == 201, code.text
        r = c.post("/api/v1/devices/enroll", json={"code": code.json()["code"], "name": "east-1"})
        assert r.status_code == 201, r.text
        device = {"Authorization": f"Bearer rpd_{r.json()['device_id']}.{r.json()['secret']}"}
        instances = []
        for f in study.files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            instances.append({
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "series_instance_uid": str(ds.SeriesInstanceUID),
                "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                "size": f.stat().st_size,
            })  # fmt: skip
        r = c.post(
            f"/api/v1/studies/{study.study_instance_uid}/manifest",
            json={"instances": instances},
            headers=device,
        )
        assert r.status_code == 200, r.text

    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    traffic = Traffic(page)
    hub.secrets["nightshift"] = _with_totp(hub.proc, "nightshift", ["north"])
    _sign_in(page, hub, "nightshift")
    _send(page, study.files)
    card = page.locator('[data-testid="study-card"]').filter(has_text="stays on this device")
    card.wait_for(timeout=60_000)
    assert card.get_attribute("data-stage") == "device"
    assert traffic.creations == [], "a held study was uploaded"
    assert not any(s in archive_files(hub.archive) for s in study.sop_instance_uids)
    ctx.close()
