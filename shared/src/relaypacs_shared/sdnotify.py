"""systemd's service notification protocol (sd_notify(3)), without libsystemd.

Under a unit with ``Type=notify`` systemd hands the service ``NOTIFY_SOCKET`` (a datagram
socket, possibly in the abstract namespace when it starts with ``@``) and, with
``WatchdogSec=``, ``WATCHDOG_USEC``. The service says ``READY=1`` once it serves, then
``WATCHDOG=1`` at least every half watchdog interval while it is healthy; if the pings stop,
systemd kills and restarts it. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    """Sends notifications to the socket named by ``NOTIFY_SOCKET`` in ``environ``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_seconds: float | None = None
        ours = not pid or pid == str(os.getpid())
        if ours and usec.isascii() and usec.isdigit() and int(usec) > 0:
            self.watchdog_seconds = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ping_interval(self, default: float = 0.5) -> float:
        """How often to say WATCHDOG=1: half the watchdog interval, never more than ``default``
        seconds apart when there is no watchdog (callers loop at their own pace then)."""
        if self.watchdog_seconds is None:
            return default
        return max(0.05, self.watchdog_seconds / 2)

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``notify(READY=1, STATUS="serving")``); False if nothing
        was sent (not under systemd, or the socket is gone)."""
        if self.address is None or not fields:
            return False
        message = "\n".join(f"{k}={_one_line(v)}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(message)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status, MAINPID=os.getpid())

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str) -> bool:
        return self.notify(STOPPING=1, STATUS=status)


def _one_line(value: str | int) -> str:
    return str(value).replace("\n", " ")
