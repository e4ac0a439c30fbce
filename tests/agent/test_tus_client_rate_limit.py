"""A hub rate-limiting upload creation (429) is a reason to retry later, not a refusal."""

from __future__ import annotations

import httpx
import pytest

from relaypacs_agent.uplink.client import HubUnavailable
from relaypacs_agent.uplink.tus_client import TusClient


def test_429_on_create_is_transient() -> None:
    def answer(_request: httpx.Request) -> httpx.Response:
        body = {"code": "rate_limited", "detail": "too many requests"}
        return httpx.Response(429, json=body, headers={"Retry-After": "3"})

    http = httpx.Client(transport=httpx.MockTransport(answer), base_url="http://hub")
    with pytest.raises(HubUnavailable):
        TusClient(http).create(10, {"kind": "relaypacs-segment"})
