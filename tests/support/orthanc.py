"""A real Orthanc with the DICOMweb plugin, started as a plain process for integration tests.

Orthanc 1.10 always binds 0.0.0.0 and has no bind-address option, so every server gets ports
found free by binding port 0. Another process can still take a port between our probe and
Orthanc's bind; when Orthanc exits early we retry with fresh ports.

    with OrthancServer() as orthanc:
        httpx.post(f"{orthanc.dicomweb_url}/studies", ...)
        assert orthanc.instance_count() == 1
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")


def orthanc_available() -> bool:
    """True when the Orthanc binary and its DICOMweb plugin are installed."""
    binary = ORTHANC_BINARY if ORTHANC_BINARY.exists() else shutil.which("Orthanc")
    return binary is not None and Path(binary).exists() and DICOMWEB_PLUGIN.exists()


def free_port() -> int:
    """A TCP port nothing listens on right now (on any address, as Orthanc binds 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))  # Orthanc binds 0.0.0.0, so probe the same
        return int(sock.getsockname()[1])


class OrthancStartError(RuntimeError):
    pass


class OrthancServer:
    """Start Orthanc in a temporary directory; stop it and remove the directory on exit."""

    def __init__(
        self,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, list[Any]] | None = None,
        http_timeout: int = 60,
        start_timeout: float = 30.0,
        start_attempts: int = 3,
        python_script: Path | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        """``python_script``: a script for Orthanc's Python plugin (``orthanc-python``);
        ``extra_config``: more top-level configuration (e.g. the script's own section)."""
        self.aet = aet
        self.python_script = python_script
        self.extra_config = extra_config or {}
        self.modalities = modalities or {}
        self.http_timeout = http_timeout
        self.start_timeout = start_timeout
        self.start_attempts = start_attempts
        self.http_port = 0
        self.dicom_port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._exited_early = False

    # -- addresses --------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def workdir(self) -> Path:
        assert self._tmp is not None, "Orthanc is not started"
        return Path(self._tmp.name)

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="relaypacs-orthanc-")
        last_error: OrthancStartError | None = None
        for _ in range(self.start_attempts):
            try:
                self._start_once()
                return
            except OrthancStartError as exc:
                last_error = exc
                self._terminate()
                if not self._exited_early:
                    break  # it ran but never answered: new ports will not help
        self.stop()
        assert last_error is not None
        raise last_error

    def _write_config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "Name": "relaypacs-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "HttpTimeout": self.http_timeout,
            "StorageCompression": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "StowMaxInstances": 0,
                "StowMaxSize": 0,
            },
        }
        if self.modalities:
            config["DicomModalities"] = self.modalities
        if self.python_script is not None:
            config["Plugins"].append(str(PYTHON_PLUGIN))
            config["PythonScript"] = str(self.python_script)
        config.update(self.extra_config)
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path

    def _start_once(self) -> None:
        self.http_port = free_port()
        self.dicom_port = free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        config_path = self._write_config()
        self._exited_early = False
        self._log_file = self.log_path.open("ab")
        binary = str(ORTHANC_BINARY) if ORTHANC_BINARY.exists() else "Orthanc"
        self._proc = subprocess.Popen(
            [binary, str(config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    self._exited_early = True
                    raise OrthancStartError(
                        f"Orthanc exited with code {self._proc.returncode} while starting\n"
                        + self.log_tail()
                    )
                try:
                    if client.get(f"{self.http_url}/system").status_code == 200:
                        self._check_dicomweb(client)
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise OrthancStartError(
            f"Orthanc did not answer on {self.http_url} within {self.start_timeout:.0f} s\n"
            + self.log_tail()
        )

    def _check_dicomweb(self, client: httpx.Client) -> None:
        # Orthanc starts without a plugin it cannot load and only logs it: fail loudly instead.
        plugins = client.get(f"{self.http_url}/plugins").json()
        if "dicom-web" not in plugins:
            raise OrthancStartError(
                f"Orthanc started without the DICOMweb plugin (loaded: {plugins})\n"
                + self.log_tail()
            )

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_tail(self, lines: int = 40) -> str:
        if self._tmp is None or not self.log_path.exists():
            return "(no Orthanc log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- REST helpers -----------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.http_url}{path}", params=params, timeout=30.0)
        response.raise_for_status()
        return response.json()

    def instance_count(self) -> int:
        return int(self._get("/statistics")["CountInstances"])

    def study_instance_uids(self) -> set[str]:
        studies = self._get("/studies", expand="")
        return {s["MainDicomTags"]["StudyInstanceUID"] for s in studies}

    def instance_id(self, sop_instance_uid: str) -> str | None:
        """Orthanc's own identifier for the instance, or None when it does not hold it."""
        response = httpx.post(
            f"{self.http_url}/tools/find",
            json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
            timeout=30.0,
        )
        response.raise_for_status()
        ids = response.json()
        return str(ids[0]) if ids else None

    def fetch_instance_file(self, sop_instance_uid: str) -> bytes:
        """The Part 10 file exactly as Orthanc stored it."""
        orthanc_id = self.instance_id(sop_instance_uid)
        if orthanc_id is None:
            raise KeyError(f"Orthanc holds no instance {sop_instance_uid}")
        response = httpx.get(f"{self.http_url}/instances/{orthanc_id}/file", timeout=30.0)
        response.raise_for_status()
        return response.content

    def clear(self) -> None:
        """Delete every study, so one server can serve several tests."""
        for study_id in self._get("/studies"):
            httpx.delete(f"{self.http_url}/studies/{study_id}", timeout=30.0).raise_for_status()
