"""sd_notify(3) from relaypacs_shared.sdnotify, against a real datagram socket standing in for
systemd's notification socket (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaypacs_shared.sdnotify import Notifier


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify")
        s.bind(name)
    else:
        name = f"@relaypacs-test-{os.getpid()}-{id(s)}"
        s.bind("\0" + name[1:])
    s.settimeout(2)
    yield name, s
    s.close()


def test_ready_watchdog_and_stopping_reach_the_socket(listener: tuple[str, socket.socket]) -> None:
    name, s = listener
    n = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "30000000"})
    assert n.enabled and n.watchdog_seconds == 30.0 and n.ping_interval() == 15.0
    assert n.ready("relaying to\nhttps://hub")
    got = dict(line.split("=", 1) for line in s.recv(4096).decode().splitlines())
    assert got == {"READY": "1", "STATUS": "relaying to https://hub", "MAINPID": str(os.getpid())}
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    assert n.stopping("stopping")
    assert s.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_outside_systemd_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_seconds is None
    assert n.ping_interval() == 0.5
    assert not n.ready("x") and not n.watchdog()


def test_a_watchdog_meant_for_another_process_is_ignored(tmp_path: Path) -> None:
    n = Notifier(
        {"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    )
    assert n.watchdog_seconds is None
    # A socket that vanished (systemd restarted) is not an error for the service.
    assert not n.watchdog()
