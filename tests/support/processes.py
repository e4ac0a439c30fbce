"""Real hub and agent processes for integration tests, started as a user would start them."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.orthanc import free_port


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class _Proc:
    name = "process"

    def __init__(
        self, argv: list[str], env: dict[str, str], log_path: Path, prefix: list[str] | None = None
    ) -> None:
        self.argv = [*(prefix or []), *argv]
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class HubProcess(_Proc):
    name = "hub"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        prefix: list[str] | None = None,
        probe_prefix: list[str] | None = None,
        ca_file: Path | None = None,
        **settings: str,
    ) -> None:
        self.port = port or free_port()
        self.host = host
        # HTTPS when the hub is given a certificate; ca_file: the CA the health probe trusts.
        self.scheme = "https" if "tls_certfile" in settings else "http"
        self.ca_file = ca_file
        self.probe_prefix = probe_prefix
        env = {
            "RELAYPACS_HUB_HOST": host,
            "RELAYPACS_HUB_DATA_DIR": str(workdir / "hub"),
            "RELAYPACS_HUB_PORT": str(self.port),
            "RELAYPACS_HUB_WORKER_POLL_SECONDS": "0.5",
            # Opt in to agents without a credential (tests that enroll pass "false").
            "RELAYPACS_HUB_ANONYMOUS_AGENTS": "true",
            **{f"RELAYPACS_HUB_{k.upper()}": v for k, v in settings.items()},
        }
        super().__init__(
            [sys.executable, "-m", "relaypacs_hub.cli", "serve"], env, workdir / "hub.log", prefix
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def _healthy(self) -> bool:
        if self.probe_prefix is not None:  # the hub lives in another network namespace
            probe = [*self.probe_prefix, "curl", "-fs", "-m", "2", self.url + "/healthz"]
            return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
        try:
            verify = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True
            return httpx.get(self.url + "/healthz", timeout=2, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 60) -> None:
        super().start()

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"hub exited at start:\n{self.log()[-3000:]}")
            return self._healthy()

        wait_for(ready, timeout, "the hub to answer /healthz")


class AgentProcess(_Proc):
    name = "agent"

    def __init__(
        self, workdir: Path, hub_url: str, prefix: list[str] | None = None, **settings: str
    ) -> None:
        self.data_dir = workdir / "agent"
        self.inbox = workdir / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        env = {
            "RELAYPACS_AGENT_DATA_DIR": str(self.data_dir),
            "RELAYPACS_AGENT_INBOX": str(self.inbox),
            "RELAYPACS_AGENT_HUB_URL": hub_url,
            "RELAYPACS_AGENT_SETTLE_SECONDS": "0.5",
            "RELAYPACS_AGENT_SCAN_INTERVAL_SECONDS": "0.5",
            "RELAYPACS_AGENT_QUIET_PERIOD_SECONDS": "2",
            "RELAYPACS_AGENT_STATUS_POLL_SECONDS": "1",
            "RELAYPACS_AGENT_RETRY_MAX_SECONDS": "3",
            "RELAYPACS_AGENT_WEB_PORT": "0",  # the LAN web app only where a test asks for it
            **{f"RELAYPACS_AGENT_{k.upper()}": v for k, v in settings.items()},
        }
        super().__init__(
            [sys.executable, "-m", "relaypacs_agent.cli", "run"], env, workdir / "agent.log", prefix
        )

    def status(self) -> dict[str, Any]:
        for attempt in range(5):
            out = subprocess.run(
                [sys.executable, "-m", "relaypacs_agent.cli", "status", "--json"],
                env=self.env,
                capture_output=True,
                timeout=60,
            )
            if out.returncode == 0:
                return dict(json.loads(out.stdout))
            # The agent may be creating its tables at this very moment: ask again.
            time.sleep(0.5 * (attempt + 1))
        raise AssertionError(f"relaypacs-agent status failed:\n{out.stderr.decode()[-2000:]}")


def folder_destinations(path: Path, archive: Path, extra: str = "") -> Path:
    path.write_text(
        f'[[destinations]]\nname = "archive"\ntype = "folder"\npath = "{archive}"\n{extra}',
        encoding="utf-8",
    )
    return path
