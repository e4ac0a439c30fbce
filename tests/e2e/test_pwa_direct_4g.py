"""No agent nearby, over 4G: the upload app sends straight to a real hub across a shaped link.

Chromium runs in the WAN kit's edge namespace, the hub (and the Orthanc it delivers to) in the
hub namespace; every byte between the browser and the hub crosses the kit's veth pair (tc rate,
nftables loss, the link taken down). Byte-identical arrival in Orthanc is the only success.

Reproduce (root, iproute2, nftables): ``uv run pytest -q -s tests/e2e/test_pwa_direct_4g.py``
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from relaypacs_dev.generate import generate_study
from relaypacs_dev.wan import LinkProfile, WanLink, wan_available
from tests.e2e.helpers import archive_files
from tests.e2e.test_pwa_direct import (
    ADMIN_TOKEN,
    DESKTOP,
    Hub,
    Traffic,
    _committed,
    _send,
    _sign_in,
    _with_totp,
)
from tests.support.browser import CHROMIUM, PWA_DIST, ensure_pwa_built
from tests.support.orthanc import OrthancServer, orthanc_available
from tests.support.processes import HubProcess, folder_destinations, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.wan, pytest.mark.timeout(600)]

CLONE_NEWNET = 0x40000000
FOUR_G = LinkProfile(rate_mbit=8, loss_pct=2, loss_direction="both")


def _skip_without_wan() -> None:
    if (reason := wan_available()) is not None:
        pytest.skip(reason)


@contextmanager
def _netns(name: str) -> Iterator[None]:
    """This thread (and what it spawns) in network namespace ``name``, then back where it was.

    setns(2) with CLONE_NEWNET moves the calling thread only; Python 3.11 has no os.setns."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(there)
        os.close(home)


@contextmanager
def _browser(
    workdir: Path, prefix: list[str], origin: str | None = None
) -> Iterator[tuple[Any, int]]:
    """Chromium started through a wrapper (e.g. ``ip netns exec <ns>``), which writes its pid
    first: the wrapper, ``ip netns exec`` and Debian's chromium script all exec, so the pid is
    the browser's own. Playwright's driver talks to it over a pipe, across namespaces."""
    from playwright.sync_api import sync_playwright

    pidfile = workdir / "chromium.pid"
    wrapper = workdir / "chromium.sh"
    argv = " ".join([*prefix, CHROMIUM])
    wrapper.write_text(f'#!/bin/sh\necho $$ > {pidfile}\nexec {argv} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    if origin:  # plain HTTP on a private link; the deployed hub is HTTPS
        args.append(f"--unsafely-treat-insecure-origin-as-secure={origin}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(wrapper), args=args)
        try:
            yield browser, int(pidfile.read_text().strip())
        finally:
            browser.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_4g_link_reload_and_offline_then_byte_identical_in_orthanc(tmp_path: Path) -> None:
    """Over 8 Mbit/s with 2 % loss both ways: the page is reloaded mid-upload (PATCHes go on
    from non-zero offsets of the uploads already made, none is created again), then the link is
    down for 15 s (the page says it is offline and the uploads wait), then it comes back and the
    study completes. Every instance is in Orthanc with the original bytes."""
    _skip_without_wan()
    if not orthanc_available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (make system-deps)")
    ensure_pwa_built()
    # 10 x 2 MB = 20 MB (about 7 MB once DEFLATEd), 64 KB PATCHes: a dozen per instance.
    study = generate_study(tmp_path / "ct", modality="CT", instances=10, seed=4401, rows=1024,
                           columns=1024)  # fmt: skip
    originals = {
        sop: _sha(f.read_bytes())
        for sop, f in zip(study.sop_instance_uids, study.files, strict=True)
    }
    with WanLink(FOUR_G) as link:
        with _netns(link.hub_ns):
            orthanc = OrthancServer()
            orthanc.start()
        try:
            dest = tmp_path / "d.toml"
            dest.write_text(
                f'[[destinations]]\nname = "orthanc"\ntype = "dicomweb"\n'
                f'url = "{orthanc.dicomweb_url}"\n',
                encoding="utf-8",
            )
            proc = HubProcess(
                tmp_path,
                host=link.hub_ip,
                prefix=link.wrap("hub", []),
                probe_prefix=link.wrap("edge", []),
                admin_token=ADMIN_TOKEN,
                destinations_file=str(dest),
                allow_agent_token="false",
                pwa_dir=str(PWA_DIST),
            )
            proc.start(timeout=120)
            hub = Hub(proc, tmp_path / "unused")
            try:
                with _netns(link.hub_ns):
                    hub.secrets["mobile"] = _with_totp(proc, "mobile", ["north"])
                _upload_over_the_link(tmp_path, link, hub, study.files)
                with _netns(link.hub_ns):
                    wait_for(
                        lambda: orthanc.instance_count() == len(study.files),
                        120,
                        "every instance in Orthanc",
                        interval=1,
                    )
                    for sop, digest in originals.items():
                        got = orthanc.fetch_instance_file(sop)
                        assert _sha(got) == digest, f"{sop} differs from the original in Orthanc"
            finally:
                proc.terminate()
        finally:
            with _netns(link.hub_ns):
                orthanc.stop()


def _upload_over_the_link(tmp_path: Path, link: WanLink, hub: Hub, files: list[Path]) -> None:
    origin = f"http://{link.hub_ip}:{hub.proc.port}"
    with _browser(tmp_path, link.wrap("edge", []), origin) as (browser, _):
        ctx = browser.new_context(viewport=DESKTOP)
        page = ctx.new_page()
        traffic = Traffic(page)
        started = time.monotonic()
        _sign_in(page, hub, "mobile")
        page.evaluate("localStorage.setItem('relaypacs.chunkSize', String(64 * 1024))")
        _send(page, files)

        def settle(pred: Any, timeout: float, what: str) -> None:
            # Playwright delivers request events only while it is called: wait through the page.
            wait_for(lambda: page.wait_for_timeout(100) or pred(), timeout, what)

        settle(lambda: len(traffic.patches) >= 4, 90, "an upload under way")
        before = {u for u, *_ in traffic.patches}
        seen, created = len(traffic.patches), len(traffic.creations)
        page.reload()
        settle(lambda: len(traffic.patches) >= seen + 4, 90, "the upload going on after the reload")
        resumed = [p for p in traffic.patches[seen:] if p[0] in before and p[1] > 0]
        assert resumed, "no upload went on from where the hub stood after the reload"
        reloaded_at = time.monotonic() - started

        # The link goes down for 15 s: the page says so in plain words, nothing is lost.
        assert len(traffic.creations) < len(files), "the study was all sent before the outage"
        link.ns(link.edge_ns, "ip", "link", "set", link.edge_if, "down")
        down_at = time.monotonic()
        status = page.get_by_test_id("hub-status")
        try:
            settle(lambda: "Offline" in status.inner_text(), 10, "the page to say it is offline")
            said = status.inner_text()
            settle(lambda: time.monotonic() - down_at >= 15, 20, "15 s offline")
            during = len(traffic.patches)
        finally:
            link.ns(link.edge_ns, "ip", "link", "set", link.edge_if, "up")
        settle(lambda: "Direct to the hub" in status.inner_text(), 30, "the page back online")
        settle(lambda: len(traffic.patches) > during, 60, "PATCHes again after the outage")
        _committed(page, 1)
        elapsed = time.monotonic() - started
        assert said == "Offline — uploads wait on this device"
        # One upload per instance: the reload and the outage started none of them over.
        assert len(traffic.creations) == len(files), (created, len(traffic.creations))
        ctx.close()
    print(
        f"\n{len(files)} instances over {link.profile.describe()}: reloaded at {reloaded_at:.0f}s, "
        f"15 s offline, committed after {elapsed:.0f}s; {traffic.patched_bytes} bytes PATCHed "
        f"in {len(traffic.patches)} requests"
    )


def _tree_rss(root: int) -> int:
    """VmRSS (bytes) summed over ``root`` and every process descending from it."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class _PipeCdp:
    """A bare CDP client over --remote-debugging-pipe (fds 3 and 4 of Chromium): it enables only
    what it asks for. Playwright enables the Network domain on every page, and with it Chromium's
    renderer keeps the body of every request (300 POSTs of 1 MB: its RSS ~370 MB under
    Playwright, ~50 MB without), which is DevTools' memory, not the app's."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._out = os.fdopen(to_browser, "wb", buffering=0)
        self._in = os.fdopen(from_browser, "rb", buffering=0)
        self._next = 0
        self._buf = b""

    def call(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._out.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = self._in.read(1 << 16)
                assert chunk, "Chromium closed its DevTools pipe"
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next:
                assert "error" not in answer, answer
                return answer["result"]

    def evaluate(self, session: str, expression: str) -> Any:
        r = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                           "returnByValue": True}, session)  # fmt: skip
        return r["result"].get("value")


_UPLOADED = """new Promise((ok, no) => {
  const q = indexedDB.open('relaypacs')
  q.onerror = () => no(q.error)
  q.onsuccess = () => {
    const all = q.result.transaction('files').objectStore('files').getAll()
    all.onsuccess = () => {
      ok(all.result.filter((f) => f.state === 'uploaded').length)
      q.result.close()
    }
  }
})"""
_COMMITTED = 'document.querySelectorAll(\'[data-testid="study-card"][data-stage="hub"]\').length'


@contextmanager
def _chromium_with_pipe(workdir: Path) -> Iterator[tuple[int, int, _PipeCdp]]:
    """Chromium started here (headless): a DevTools port for Playwright, a pipe for _PipeCdp.
    Yields (pid, port, pipe client)."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    # Out of the way of 3 and 4 before the child puts them there.
    a, b = (
        fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10),
        fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10),
    )

    def fds() -> None:
        os.dup2(a, 3)
        os.dup2(b, 4)

    profile = workdir / "profile"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--remote-debugging-port=0", "--remote-debugging-pipe", f"--user-data-dir={profile}",
         "about:blank"],
        preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for fd in (to_browser_r, from_browser_w, a, b):
        os.close(fd)
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for(port_file.is_file, 30, "Chromium's DevTools port")
        port = int(port_file.read_text().split()[0])
        yield proc.pid, port, _PipeCdp(to_browser_w, from_browser_r)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_memory_stays_flat_while_a_500mb_study_is_sent(tmp_path: Path) -> None:
    """250 x 2 MB (525 MB) sent straight to a hub (folder destination, no shaped link), the
    browser's memory sampled every second: the page's JS heap (CDP Performance.getMetrics,
    JSHeapUsedSize) and the RSS of Chromium's whole process tree (/proc, VmRSS summed over the
    browser and its children, shared pages counted once per process).

    Playwright signs in and picks the files, then lets go of the browser before the send:
    attached, it keeps every request body in the renderer (see _PipeCdp). Memory is then read
    over a bare DevTools pipe.

    Thresholds, from measurements (docs/performance.md) with margin: the JS heap peaks under
    150 MB (measured 19-23 MiB), and the tree's RSS at the end of the send is at most 300 MB
    above its RSS once 10 % of the instances were uploaded (measured +142 to +217 MiB). A study
    held in memory (525 MB) would blow through both. The growth that remains is the renderer's,
    outside the JS heap (about 0.8 MB per instance; a forced GC at the end gives back ~70 MB of
    it); its cause is not found yet."""
    ensure_pwa_built()
    from playwright.sync_api import sync_playwright

    study = generate_study(tmp_path / "big", modality="CT", instances=250, seed=4402, rows=1024,
                           columns=1024)  # fmt: skip
    n = len(study.files)
    size = sum(f.stat().st_size for f in study.files)
    archive = tmp_path / "archive"
    archive.mkdir()
    proc = HubProcess(
        tmp_path,
        admin_token=ADMIN_TOKEN,
        destinations_file=str(folder_destinations(tmp_path / "d.toml", archive)),
        allow_agent_token="false",
        pwa_dir=str(PWA_DIST),
    )
    proc.start()
    hub = Hub(proc, archive)
    samples: list[tuple[float, int, int, int]] = []  # s, instances uploaded, JS heap, RSS
    try:
        hub.secrets["bulk"] = _with_totp(proc, "bulk", ["north"])
        with _chromium_with_pipe(tmp_path) as (pid, port, cdp):
            with sync_playwright() as p:
                browser = p.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
                page = browser.contexts[0].new_page()
                page.set_viewport_size(DESKTOP)
                _sign_in(page, hub, "bulk")
                rss_start = _tree_rss(pid)
                started = time.monotonic()
                # What _send does, but the files are given by path over CDP: Playwright copies
                # them through its pipe to a browser it did not launch (and refuses over 50 MB).
                page.get_by_test_id("new-upload").click()
                own = page.context.new_cdp_session(page)
                root = own.send("DOM.getDocument")["root"]["nodeId"]
                picker = own.send(
                    "DOM.querySelector", {"nodeId": root, "selector": '[data-testid="pick-files"]'}
                )["nodeId"]
                own.send(
                    "DOM.setFileInputFiles",
                    {"nodeId": picker, "files": [str(f) for f in study.files]},
                )
                page.get_by_label("Clinical history").first.fill("polytrauma, CT whole body")
                page.get_by_label("Referring clinician").first.fill("Dr Ama Mensah")
                page.get_by_role("radio", name="STAT").first.check()
                page.get_by_role("button", name="Send").click()
                browser.close()  # connected over CDP: lets go, the browser and page stay
            targets = cdp.call("Target.getTargets")["targetInfos"]
            pages = [t for t in targets if t["type"] == "page" and t["url"].startswith(hub.app)]
            assert len(pages) == 1, targets
            target = pages[0]
            attach = {"targetId": target["targetId"], "flatten": True}
            session = cdp.call("Target.attachToTarget", attach)["sessionId"]
            cdp.call("Performance.enable", {}, session)
            while not cdp.evaluate(session, _COMMITTED):
                assert time.monotonic() - started < 300, "the 500 MB study was not committed"
                metrics = cdp.call("Performance.getMetrics", {}, session)["metrics"]
                heap = next(m["value"] for m in metrics if m["name"] == "JSHeapUsedSize")
                samples.append((time.monotonic() - started, cdp.evaluate(session, _UPLOADED),
                                int(heap), _tree_rss(pid)))  # fmt: skip
                time.sleep(1)
            elapsed = time.monotonic() - started
            rss_end = _tree_rss(pid)
        wait_for(lambda: len(archive_files(archive)) == n, 120, "the study delivered")
    finally:
        proc.terminate()
    found = archive_files(archive)
    for sop, f in zip(study.sop_instance_uids, study.files, strict=True):
        assert _sha(found[sop].read_bytes()) == _sha(f.read_bytes()), f"{sop} differs"

    mb = 1024 * 1024
    peak_heap = max(s[2] for s in samples)
    peak_rss = max(s[3] for s in samples)
    tenth = next(s for s in samples if s[1] >= n // 10)
    print(
        f"\n{size / 1e6:.0f} MB in {n} instances sent in {elapsed:.0f}s "
        f"({size / 1e6 / elapsed:.1f} MB/s); JS heap peak {peak_heap / mb:.0f} MiB; Chromium "
        f"RSS before {rss_start / mb:.0f} MiB, at 10 % {tenth[3] / mb:.0f} MiB, peak "
        f"{peak_rss / mb:.0f} MiB, at the end {rss_end / mb:.0f} MiB ({len(samples)} samples)"
    )
    for t, k, heap, rss in samples[:: max(1, len(samples) // 12)]:
        print(f"  {t:5.0f}s  {k:3d} uploaded  heap {heap / mb:4.0f} MiB  rss {rss / mb:5.0f} MiB")
    assert peak_heap < 150 * mb, f"JS heap peaked at {peak_heap / mb:.0f} MiB"
    assert rss_end - tenth[3] < 300 * mb, (
        f"Chromium grew from {tenth[3] / mb:.0f} MiB to {rss_end / mb:.0f} MiB during the send"
    )
