"""dcmtk's storescp as a real C-STORE peer for integration tests.

Every received object is written under its own unique file name (``+uf``), so an instance
stored twice shows up as two files: the tests can tell "exactly once" from "at least once".

    with StoreSCP(aet="ARCHIVE") as scp:
        ... C-STORE to 127.0.0.1:scp.port, called AE title "ARCHIVE" ...
        assert scp.received() == {sop_uid: 1, ...}
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

import pydicom


def _dcmtk_storescp() -> str | None:
    # pynetdicom installs a Python "storescp" into the virtualenv's bin, ahead on PATH: take
    # dcmtk's, the one Debian's package puts in /usr/bin.
    for candidate in ("/usr/bin/storescp", "/usr/local/bin/storescp"):
        if Path(candidate).exists():
            return candidate
    found = shutil.which("storescp")
    return found if found and ".venv" not in found else None


STORESCP = _dcmtk_storescp()


def storescp_available() -> bool:
    return STORESCP is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StoreSCP:
    def __init__(self, *, aet: str = "STORESCP", extra_args: list[str] | None = None) -> None:
        self.aet = aet
        self.extra_args = extra_args or []
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def out_dir(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name) / "received"

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name) / "storescp.log"

    def __enter__(self) -> StoreSCP:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        assert STORESCP is not None, "dcmtk's storescp is not installed (apt: dcmtk)"
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="relaypacs-storescp-")
            self.out_dir.mkdir()
        for attempt in range(3):
            # Back on the same port after stop() (an archive that comes back), else a free one.
            if not (attempt == 0 and self.port):
                self.port = _free_port()
            self._log = self.log_path.open("ab")
            self._proc = subprocess.Popen(
                [
                    STORESCP,
                    "--aetitle",
                    self.aet,
                    "--output-directory",
                    str(self.out_dir),
                    "+uf",  # unique file names: a duplicate store is a second file
                    "+xa",  # accept every transfer syntax dcmtk knows
                    "-v",
                    *self.extra_args,
                    str(self.port),
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            if self._wait_listening():
                return
            self._terminate()
        raise RuntimeError(f"storescp did not start:\n{self.log_tail()}")

    def _wait_listening(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop listening (an archive going down); the received files are kept."""
        self._terminate()

    def __del__(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def close(self) -> None:
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_tail(self, lines: int = 30) -> str:
        if self._tmp is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def files(self) -> list[Path]:
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())

    def received(self) -> Counter[str]:
        """How many times each SOP Instance UID was received."""
        counts: Counter[str] = Counter()
        for path in self.files():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            counts[str(ds.SOPInstanceUID)] += 1
        return counts

    def dataset_bytes(self, sop_instance_uid: str) -> bytes:
        """The data set (without the file meta group) as storescp wrote it."""
        for path in self.files():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.SOPInstanceUID == sop_instance_uid:
                return _dataset_part(path.read_bytes())
        raise KeyError(sop_instance_uid)


def _dataset_part(data: bytes) -> bytes:
    """Bytes after the File Meta Information group (PS3.10 7.1)."""
    pos = 132
    while True:
        group = int.from_bytes(data[pos : pos + 2], "little")
        if group != 0x0002:
            return data[pos:]
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV"):
            length = int.from_bytes(data[pos + 8 : pos + 12], "little")
            pos += 12 + length
        else:
            length = int.from_bytes(data[pos + 6 : pos + 8], "little")
            pos += 8 + length
