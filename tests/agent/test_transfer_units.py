"""Small pure parts of the uplink: the routine window, the bandwidth cap and the number of
parallel streams under loss."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from relaypacs_agent.uplink.transfer import (
    MAX_STREAMS,
    Pacer,
    in_window,
    parts_for,
    streams_for,
)


@pytest.mark.parametrize(
    ("window", "hour", "minute", "inside"),
    [
        (None, 12, 0, True),
        ("22:00-06:00", 23, 30, True),
        ("22:00-06:00", 3, 0, True),
        ("22:00-06:00", 6, 0, False),
        ("22:00-06:00", 12, 0, False),
        ("08:30-17:00", 8, 30, True),
        ("08:30-17:00", 17, 0, False),
    ],
)
def test_routine_window(window: str | None, hour: int, minute: int, inside: bool) -> None:
    assert in_window(window, datetime(2026, 1, 1, hour, minute)) is inside


def test_pacer_holds_the_rate() -> None:
    pace = Pacer(200_000)  # bytes per second
    started = time.monotonic()
    for _ in range(30):
        pace(20_000)  # 600 kB in all; the first second's allowance is a burst
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed <= 3.5


def test_zero_means_no_cap() -> None:
    pace = Pacer(0)
    started = time.monotonic()
    for _ in range(1000):
        pace(1_000_000)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("configured", "loss", "streams"),
    [
        (3, None, 12),  # nothing measured yet: hedged
        (3, 0.0, 3),  # a clean link: the configured count
        (3, 0.05, 7),
        (3, 0.1, 12),
        (3, 0.3, MAX_STREAMS),
        (3, 0.9, MAX_STREAMS),
        (1, 0.5, 1),  # one stream stays one
        (16, 0.0, 16),
    ],
)
def test_streams_grow_with_the_loss_tcp_measures(
    configured: int, loss: float | None, streams: int
) -> None:
    assert streams_for(configured, loss) == streams


@pytest.mark.parametrize(
    ("streams", "configured", "length", "parts"),
    [
        (3, 3, 6_000_000, 3),  # a clean link: one part per stream
        (21, 3, 6_000_000, 42),  # 30% loss: two parts per stream, taken as streams free up
        (32, 3, 64 * 1024 * 1024, 64),  # never more than the hub joins in one final upload
        (6, 3, 400 * 1024, 6),  # parts of at least 64 KiB, and never fewer than the streams
        (1, 1, 6_000_000, 1),
    ],
)
def test_lossy_links_cut_segments_finer_than_their_streams(
    streams: int, configured: int, length: int, parts: int
) -> None:
    assert parts_for(streams, configured, length) == parts
