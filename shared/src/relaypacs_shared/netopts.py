"""TCP socket options for links that lose packets in both directions.

Linux retransmits a lost segment after the retransmission timeout (RTO), and doubles the RTO for
every further loss of the same segment, up to 120 s. On a link that loses a third of its packets
each way, runs of four or five losses are common, and a connection then sits idle for tens of
seconds although the link works. Two per-socket options (Linux 6.15 and later) bound that:

* ``TCP_RTO_MAX_MS``: the backoff stops growing here (default 1 s: a lost segment is tried
  again at least once a second, however many times it was lost before);
* ``TCP_RTO_MIN_US``: the floor of the RTO (Linux's fixed 200 ms is an age on a LAN-like
  link; the RTO still follows the measured round trip, so a satellite link's RTO stays above
  its round trip).

With a bounded backoff, the kernel's own "give up" budget (``tcp_retries2``, modelled on the
unbounded backoff) shrinks to about ten seconds, and a connection that loses one segment
fifteen times in a row (1 in 75 at 50% loss each way) is dropped with ETIMEDOUT:
``TCP_USER_TIMEOUT`` puts that budget back to minutes (the application's own stall timeouts
come first).
``TCP_SYNCNT`` lets a connection attempt send its SYN more often before it fails (the attempts
come once a second with the bounded backoff). ``TCP_NODELAY`` sends small requests (HEAD, a
manifest) at once. On older kernels (Raspberry Pi
OS bookworm has 6.1 or 6.6) the RTO options do not exist: ``supported_options`` leaves them out
and the link works as before, only slower under heavy loss.
"""

from __future__ import annotations

import socket
import sys
from functools import cache
from typing import Any

TCP_RTO_MAX_MS = 44  # linux/tcp.h, Linux 6.15
TCP_RTO_MIN_US = 45  # linux/tcp.h, Linux 6.15

SocketOption = tuple[int, int, int]

DEFAULT_RTO_MAX_MS = 1000
DEFAULT_RTO_MIN_MS = 50
USER_TIMEOUT_MS = 120_000  # unacknowledged data this long ends a connection
SYN_COUNT = 15  # SYNs before a connection attempt fails (about 15 s with the bounded backoff)


@cache
def _kernel_accepts(level: int, name: int, value: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(level, name, value)
    except OSError:
        return False
    return True


def supported_options(
    rto_max_ms: int = DEFAULT_RTO_MAX_MS, rto_min_ms: int = DEFAULT_RTO_MIN_MS
) -> list[SocketOption]:
    """The options for a connection over a lossy WAN that this kernel accepts.

    ``rto_max_ms`` 0 or ``rto_min_ms`` 0 leaves that bound at the kernel's default. The kernel
    takes ``TCP_RTO_MAX_MS`` between 1,000 and 120,000 ms."""
    wanted: list[SocketOption] = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    if rto_max_ms:
        wanted.append((socket.IPPROTO_TCP, TCP_RTO_MAX_MS, max(1000, min(rto_max_ms, 120_000))))
        if _kernel_accepts(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, 1000):
            wanted.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS))
            wanted.append((socket.IPPROTO_TCP, socket.TCP_SYNCNT, SYN_COUNT))
    if rto_min_ms:
        wanted.append((socket.IPPROTO_TCP, TCP_RTO_MIN_US, max(1, rto_min_ms) * 1000))
    return [opt for opt in wanted if _kernel_accepts(*opt)]


def apply(sock: Any, options: list[SocketOption]) -> int:
    """Set ``options`` on ``sock`` (a socket, or asyncio's TransportSocket); how many took."""
    applied = 0
    for level, name, value in options:
        try:
            sock.setsockopt(level, name, value)
        except (OSError, AttributeError):
            continue
        applied += 1
    return applied


# struct tcp_info (linux/tcp.h): byte offsets of the fields read here (stable since Linux 4.6).
_TCPI_RTT = 68  # __u32 tcpi_rtt, microseconds (smoothed)
_TCPI_TOTAL_RETRANS = 100  # __u32 tcpi_total_retrans
_TCPI_DATA_SEGS_OUT = 156  # __u32 tcpi_data_segs_out
_TCPI_LEN = 160


def tcp_loss(sock: Any) -> tuple[float, float] | None:
    """(retransmitted / sent data segments, smoothed RTT in seconds) of a connected TCP socket,
    from the kernel's TCP_INFO; None where the kernel (or the socket) does not tell."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    if len(raw) < _TCPI_LEN:
        return None
    rtt_us = int.from_bytes(raw[_TCPI_RTT : _TCPI_RTT + 4], sys.byteorder)
    retrans = int.from_bytes(raw[_TCPI_TOTAL_RETRANS : _TCPI_TOTAL_RETRANS + 4], sys.byteorder)
    segs = int.from_bytes(raw[_TCPI_DATA_SEGS_OUT : _TCPI_DATA_SEGS_OUT + 4], sys.byteorder)
    if segs == 0:
        return None
    return min(1.0, retrans / segs), rtt_us / 1e6
