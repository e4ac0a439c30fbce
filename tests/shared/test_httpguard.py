"""The connection guard's arithmetic and its repeat filter (relaypacs_shared.httpguard); the
attacks themselves run against a real hub in tests/e2e/test_http_attacks.py."""

from __future__ import annotations

import logging

import pytest

from relaypacs_shared.httpguard import FD_RESERVE, RepeatFilter, connection_limits


@pytest.mark.parametrize("file_limit", [256, 1024, 4096, 65536, 1048576])
@pytest.mark.parametrize("configured", [50, 300, 2000, 100_000])
def test_the_cap_and_four_accept_bursts_fit_in_the_limit(configured: int, file_limit: int) -> None:
    cap, backlog = connection_limits(configured, file_limit)
    assert 16 <= cap <= configured
    assert cap + 4 * backlog <= file_limit - FD_RESERVE
    assert 16 <= backlog <= 2048


def test_a_generous_file_limit_keeps_the_configured_cap() -> None:
    assert connection_limits(300, 1048576) == (300, 2048)
    # The attack test's hub: 1,024 handles, a cap of 300.
    assert connection_limits(300, 1024) == (300, 119)


def test_repeated_warnings_are_logged_once_per_interval_with_a_count() -> None:
    now = [0.0]
    f = RepeatFilter(every=10.0, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    assert f.filter(record("socket.accept() out of system resource"))
    assert not any(f.filter(record("socket.accept() out of system resource")) for _ in range(500))
    assert f.filter(record("another message"))
    now[0] = 10.5
    r = record("socket.accept() out of system resource")
    assert f.filter(r)
    assert r.msg.endswith("(and 500 more like it in the last 10 s)")
