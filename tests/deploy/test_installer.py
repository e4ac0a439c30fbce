"""The agent's Debian installer (installers/), for real: the offline bundle is built, installed
into a clean Debian bookworm root made by debootstrap (its own Python 3.11, no network used by
the install), enrolled at a real hub as its last step, and the installed agent is started the
way its systemd unit starts it (the unit's user, settings file and ``Type=notify`` protocol on a
socket this test holds) and delivers a study byte-identical to Orthanc. Then upgrade, rollback,
and removal that keeps or purges the data. The unit passes ``systemd-analyze verify`` and
``systemd-analyze security`` inside that root. arm64 is checked as far as this amd64 machine
can: every wheel of its bundle is for aarch64 (or pure Python).

Needs root (chroot, mount). The debootstrap root is cached in ~/.cache/relaypacs/installer-test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from relaypacs_dev.generate import generate_study
from tests.support.orthanc import OrthancServer, free_port, orthanc_available
from tests.support.processes import HubProcess, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MIRROR = os.environ.get("RELAYPACS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What a stock Debian / Raspberry Pi OS bookworm install has that minbase lacks.
PACKAGES = "python3,python3-venv,adduser,systemd"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relaypacs" / "installer-test"
)
ADMIN_TOKEN = "admin-" + "i" * 40
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}

if os.geteuid() != 0:
    pytest.skip("the installer test needs root (chroot and mount)", allow_module_level=True)


def _bookworm_tarball() -> Path:
    key = hashlib.sha256(f"{MIRROR} {PACKAGES}".encode()).hexdigest()[:12]
    tarball = CACHE / f"bookworm-{key}.tar"
    if tarball.exists():
        return tarball
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    assert Path(debootstrap).exists(), "debootstrap is missing: make system-deps"
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / "rootfs.tmp"
    shutil.rmtree(rootfs, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run(
        [
            debootstrap,
            "--variant=minbase",
            f"--include={PACKAGES}",
            "bookworm",
            str(rootfs),
            MIRROR,
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(["tar", "-C", str(rootfs), "-cf", f"{tarball}.tmp", "."], check=True)
    Path(f"{tarball}.tmp").rename(tarball)
    shutil.rmtree(rootfs)
    print(f"debootstrap bookworm: {time.monotonic() - t0:.0f} s (cached in {tarball})")
    return tarball


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    subprocess.run(
        ["bash", str(ROOT / "installers" / "build-bundle.sh"), "amd64", "arm64"],
        env={**os.environ, "BUNDLE_OUT": str(out)},
        check=True,
        capture_output=True,
    )
    return {
        arch: next(out.glob(f"relaypacs-agent-*-bookworm-{arch}.tar.gz"))
        for arch in ("amd64", "arm64")
    }


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh bookworm root with /proc mounted, as a new Raspberry Pi or PC would be."""
    root = tmp_path_factory.mktemp("bookworm") / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(_bookworm_tarball())], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


def _chroot(root: Path, *cmd: str, user: str | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    spec = [f"--userspec={user}:{user}"] if user else []
    return subprocess.run(
        ["chroot", *spec, str(root), *cmd],
        env=env or CLEAN_ENV,
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


def _unpack(bundle: Path, root: Path) -> str:
    dest = root / "root" / "bundles"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle) as tf:
        tf.extractall(dest, filter="tar")
    name = bundle.name.removesuffix(".tar.gz")
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=dest / name, check=True)
    return f"/root/bundles/{name}"


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def _owner(root: Path, path: Path) -> tuple[str, str]:
    """User and group names of path, as the chroot's own passwd and group name them."""
    st = path.stat()
    users = {
        int(f[2]): f[0]
        for f in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())
    }
    groups = {
        int(f[2]): f[0]
        for f in (line.split(":") for line in (root / "etc/group").read_text().splitlines())
    }
    return users[st.st_uid], groups[st.st_gid]


def _env_file(root: Path) -> dict[str, str]:
    env = {}
    for line in (root / "etc/relaypacs/agent.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def test_the_arm64_bundle_holds_only_aarch64_or_pure_python_wheels(
    bundles: dict[str, Path],
) -> None:
    with tarfile.open(bundles["arm64"]) as tf:
        wheels = [Path(m.name).name for m in tf.getmembers() if m.name.endswith(".whl")]
        assert any(n.endswith("/ARCH") for n in tf.getnames())
    assert len(wheels) > 20
    native = [w for w in wheels if not w.endswith("-none-any.whl")]
    assert native, "the agent has compiled dependencies (zstandard, argon2, pydantic-core)"
    wrong = [w for w in native if not re.search(r"(manylinux|linux)[^-]*_aarch64\.whl$", w)]
    assert wrong == [], wrong
    assert all(re.search(r"-(cp311-cp311|cp3\d+-abi3|py3-none)-", w) for w in native), native


def test_install_enroll_run_deliver_upgrade_rollback_remove(
    tmp_path: Path, bundles: dict[str, Path], debian: Path
) -> None:
    if not orthanc_available():
        pytest.fail("Orthanc with the DICOMweb plugin is not installed (make system-deps)")
    bundle = _unpack(bundles["amd64"], debian)
    study = generate_study(tmp_path / "study", instances=4, seed=77, rows=64, columns=64)
    with OrthancServer() as orthanc:
        dest = tmp_path / "destinations.toml"
        dest.write_text(
            f'[[destinations]]\nname = "orthanc"\ntype = "dicomweb"\n'
            f'url = "{orthanc.dicomweb_url}"\n'
        )
        hub = HubProcess(
            tmp_path, destinations_file=str(dest), admin_token=ADMIN_TOKEN, anonymous_agents="false"
        )
        hub.start()
        try:
            r = httpx.post(
                hub.url + "/api/v1/devices/enrollment-codes",
                json={"facility": "clinic-pi"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert r.status_code == 201, r.text
            code = r.json()["code"]

            # 1. Install with enrollment as the last step; no network for the wheels.
            t0 = time.monotonic()
            done = _chroot(debian, f"{bundle}/install.sh", "--hub-url", hub.url,
                           "--enroll-code", code, "--name", "pi-ct-1")  # fmt: skip
            install_s = time.monotonic() - t0
            print(f"install into a clean bookworm: {install_s:.1f} s")
            assert "enrolled as device" in done.stdout and "of facility clinic-pi" in done.stdout
            assert "created the system user relaypacs" in done.stdout
            assert "no systemd here" in done.stdout  # a chroot: the test plays systemd below
            passwd = (debian / "etc/passwd").read_text()
            assert re.search(r"^relaypacs:x:\d+:\d+::/var/lib/relaypacs-agent:/usr/sbin/nologin$",
                             passwd, re.M), passwd  # fmt: skip
            env_file = debian / "etc/relaypacs/agent.env"
            assert _mode(env_file) == "0o640" and _owner(debian, env_file) == ("root", "relaypacs")
            data = debian / "var/lib/relaypacs-agent"
            assert _mode(data) == "0o750" and _owner(debian, data) == ("relaypacs", "relaypacs")
            assert _mode(data / "inbox") == "0o2770"
            cred = data / "credential.json"
            assert _mode(cred) == "0o600" and _owner(debian, cred)[0] == "relaypacs"
            assert _env_file(debian)["RELAYPACS_AGENT_HUB_URL"] == hub.url
            current = os.readlink(debian / "opt/relaypacs-agent/current")
            assert current.startswith("0.1.0-")
            assert "relaypacs-agent" in _chroot(debian, "relaypacs-agent", "--help").stdout

            # 2. The unit, checked by systemd's own tools inside the installed system.
            unit = "/etc/systemd/system/relaypacs-agent.service"
            verify = subprocess.run(["systemd-analyze", "verify", f"--root={debian}", unit],
                                    capture_output=True, text=True)  # fmt: skip
            assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
            security = subprocess.run(
                ["systemd-analyze", "security", "--offline=true", f"--root={debian}", unit],
                capture_output=True, text=True,
            )  # fmt: skip
            exposure = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", security.stdout)
            assert exposure and float(exposure.group(1)) <= 2.0, security.stdout[-2000:]

            # 3. Start it as systemd would: the unit's user, EnvironmentFile and notify socket.
            notify = debian / "run" / "relaypacs-notify"
            notify.parent.mkdir(exist_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(notify))
            os.chmod(notify, 0o777)
            sock.settimeout(1)
            web_port, dimse_port = free_port(), free_port()
            service_env = {
                **CLEAN_ENV,
                **_env_file(debian),
                "RELAYPACS_AGENT_WEB_PORT": str(web_port),
                "RELAYPACS_AGENT_DIMSE_PORT": str(dimse_port),
                "RELAYPACS_AGENT_QUIET_PERIOD_SECONDS": "1",
                "RELAYPACS_AGENT_SETTLE_SECONDS": "0.5",
                "NOTIFY_SOCKET": "/run/relaypacs-notify",
                "WATCHDOG_USEC": "2000000",
                "HOME": "/var/lib/relaypacs-agent",
            }
            agent = subprocess.Popen(
                ["chroot", "--userspec=relaypacs:relaypacs", str(debian),
                 "/opt/relaypacs-agent/current/bin/relaypacs-agent", "run"],
                env=service_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                cwd="/",
            )  # fmt: skip
            messages: list[str] = []
            try:

                def listen() -> list[str]:
                    with contextlib.suppress(TimeoutError):
                        messages.append(sock.recv(4096).decode())
                    if agent.poll() is not None:
                        out = agent.stdout.read() if agent.stdout else ""
                        raise AssertionError(f"the agent exited: {out[-3000:]}")
                    return messages

                wait_for(lambda: any("READY=1" in m for m in listen()), 60, "READY=1")
                ready = next(m for m in messages if "READY=1" in m)
                assert f"STATUS=relaying to {hub.url}" in ready
                # Pings at half the watchdog interval (1 s here) while every thread is alive.
                before = messages.count("WATCHDOG=1")
                wait_for(lambda: listen().count("WATCHDOG=1") >= before + 2, 10, "watchdog pings")
                assert (
                    httpx.get(f"http://127.0.0.1:{web_port}/api/v1/info", timeout=5).status_code
                    == 200
                )

                # 4. A study copied into the inbox by a member of the relaypacs group arrives.
                inbox = data / "inbox"
                for i, f in enumerate(study.files):
                    shutil.copy(f, inbox / f"{i}.dcm")
                    os.chown(inbox / f"{i}.dcm", cred.stat().st_uid, cred.stat().st_gid)
                wait_for(lambda: orthanc.instance_count() == len(study.files), 120,
                         "the study in Orthanc", interval=1)  # fmt: skip
                for f in study.files:
                    sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
                    assert orthanc.fetch_instance_file(sop) == f.read_bytes()

                # The agent learns of the delivery from the hub (RELAYPACS_AGENT_STATUS_POLL).
                def agent_says() -> dict[str, Any]:
                    out = _chroot(debian, "relaypacs-agent", "status", "--json").stdout
                    return {s["study_instance_uid"]: s for s in json.loads(out)["studies"]}

                wait_for(
                    lambda: agent_says()[study.study_instance_uid]["state"] == "delivered",
                    60,
                    "the agent to show the study delivered",
                )

                # 5. SIGTERM: STOPPING=1 and a clean exit (systemd's stop).
                agent.send_signal(signal.SIGTERM)
                assert agent.wait(timeout=30) == 0
                while True:
                    try:
                        messages.append(sock.recv(4096).decode())
                    except TimeoutError:
                        break
                assert any(m.startswith("STOPPING=1") for m in messages), messages[-5:]
            finally:
                if agent.poll() is None:
                    agent.kill()
                sock.close()
        finally:
            assert hub.terminate() == 0, hub.log()[-3000:]

    # 6. Upgrade: settings, enrollment and data stay; the old programs stay for a rollback.
    with env_file.open("a") as f:
        f.write("RELAYPACS_AGENT_BANDWIDTH_LIMIT_KBPS=512\n")
    cred_before = cred.read_bytes()
    time.sleep(1.1)  # release folders are named to the second
    up = _chroot(debian, f"{bundle}/install.sh")
    assert "kept /etc/relaypacs/agent.env" in up.stdout
    assert "RELAYPACS_AGENT_BANDWIDTH_LIMIT_KBPS=512" in env_file.read_text()
    assert cred.read_bytes() == cred_before
    upgraded = os.readlink(debian / "opt/relaypacs-agent/current")
    assert upgraded != current
    assert (debian / "opt/relaypacs-agent/previous").read_text().strip() == current
    back = _chroot(debian, f"{bundle}/install.sh", "--rollback")
    assert f"back on version {current}" in back.stdout
    assert os.readlink(debian / "opt/relaypacs-agent/current") == current
    assert "relaypacs-agent" in _chroot(debian, "relaypacs-agent", "--help").stdout

    # 7. Removal keeps settings and data unless purged, and a purge never takes unsent studies.
    waiting = generate_study(tmp_path / "waiting", instances=2, seed=78, rows=32, columns=32)
    drop = debian / "tmp" / "waiting"
    shutil.copytree(waiting.files[0].parent, drop)
    for p in [drop, *drop.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    _chroot(debian, "relaypacs-agent", "import", "/tmp/waiting")
    refused = _chroot(debian, f"{bundle}/install.sh", "--uninstall", "--purge", check=False)
    assert refused.returncode == 1
    assert "1 study(ies) are not at the hub yet" in refused.stderr
    assert (debian / "opt/relaypacs-agent/current").exists() and cred.exists()
    _chroot(debian, f"{bundle}/install.sh", "--uninstall")
    assert not (debian / "opt/relaypacs-agent").exists()
    assert not (debian / "usr/local/bin/relaypacs-agent").exists()
    assert cred.exists() and env_file.exists()
    refused = _chroot(debian, f"{bundle}/install.sh", "--uninstall", "--purge", check=False)
    assert refused.returncode == 1 and "cannot check for studies" in refused.stderr
    assert cred.exists()
    _chroot(debian, f"{bundle}/install.sh", "--uninstall", "--purge", "--force")
    assert not data.exists() and not env_file.exists()
    assert "relaypacs:" not in (debian / "etc/passwd").read_text()
