"""A real S3 endpoint for tests: moto's server mode in its own process on a free loopback port.

``python -m moto.server`` is a Flask app speaking the S3 REST API over HTTP, so the minio SDK
talks to it exactly as it talks to MinIO: signing, multipart, listing, errors.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from minio import Minio

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


class MotoStartError(RuntimeError):
    pass


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> Minio:
        return Minio(self.endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"relaypacs-{uuid.uuid4().hex[:12]}"
        self.client().make_bucket(name)
        return name

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/moto-api/", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)


def _start(log_path: Path, timeout: float) -> MotoServer:
    port = free_loopback_port()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = MotoServer(port, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MotoStartError(f"moto exited with {proc.returncode}:\n{server.log()[-2000:]}")
        if server.answers():
            return server
        time.sleep(0.05)
    server.stop()
    raise MotoStartError(f"moto did not answer within {timeout:.0f}s:\n{server.log()[-2000:]}")


@contextmanager
def moto_server(log_dir: Path | None = None, timeout: float = 30) -> Iterator[MotoServer]:
    """Start moto on a free 127.0.0.1 port, wait until it answers, stop it afterwards.

    Raises ``MotoStartError`` (with moto's log) if it cannot start; a port taken between probing
    and binding is retried once.
    """
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="moto-"))
    log_path = log_dir / "moto.log"
    try:
        server = _start(log_path, timeout)
    except MotoStartError:
        server = _start(log_path, timeout)
    try:
        yield server
    finally:
        server.stop()
