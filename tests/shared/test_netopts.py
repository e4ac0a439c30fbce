"""TCP options for lossy links (relaypacs_shared.netopts), on this machine's kernel."""

from __future__ import annotations

import socket
import threading

import pytest

from relaypacs_shared.netopts import (
    TCP_RTO_MAX_MS,
    TCP_RTO_MIN_US,
    USER_TIMEOUT_MS,
    apply,
    supported_options,
    tcp_loss,
)


def _kernel_has_rto_options() -> bool:
    return any(name == TCP_RTO_MAX_MS for _, name, _ in supported_options())


def test_options_the_kernel_takes_are_set_on_a_socket() -> None:
    options = supported_options(rto_max_ms=1500, rto_min_ms=40)
    assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in options
    with socket.socket() as s:
        assert apply(s, options) == len(options)
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        if _kernel_has_rto_options():
            assert s.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == 1500
            # The kernel keeps the floor in jiffies: what it reports back is close, not exact.
            assert 40_000 <= s.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MIN_US) <= 60_000
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == USER_TIMEOUT_MS


def test_zero_leaves_the_kernel_defaults_and_bounds_are_clamped() -> None:
    assert supported_options(rto_max_ms=0, rto_min_ms=0) == [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ]
    if not _kernel_has_rto_options():
        pytest.skip("this kernel has no TCP_RTO_MAX_MS (Linux < 6.15)")
    clamped = dict(((lvl, name), v) for lvl, name, v in supported_options(rto_max_ms=10))
    assert clamped[(socket.IPPROTO_TCP, TCP_RTO_MAX_MS)] == 1000  # the kernel's lowest


def test_tcp_loss_reads_a_live_connection() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    got = bytearray()

    def sink() -> None:
        conn, _ = server.accept()
        while data := conn.recv(65536):
            got.extend(data)
        conn.close()

    t = threading.Thread(target=sink)
    t.start()
    with socket.create_connection(server.getsockname()) as c:
        c.sendall(b"x" * 2_000_000)
        measured = tcp_loss(c)
    t.join(timeout=10)
    server.close()
    assert len(got) == 2_000_000
    assert measured is not None
    loss, rtt = measured
    # The loopback loses nothing, though a loaded machine may see a tail-loss probe or two.
    assert 0.0 <= loss < 0.25
    assert 0 < rtt < 0.1
    assert tcp_loss(object()) is None
