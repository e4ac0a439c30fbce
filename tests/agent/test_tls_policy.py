"""The agent's rule: plain HTTP to the hub only on the loopback, unless explicitly allowed."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from relaypacs_agent.config import AgentSettings
from relaypacs_agent.uplink.client import HubClient, hub_ssl_context
from relaypacs_shared.netpolicy import insecure_url_problem, is_loopback_host


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]"]
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    ["10.1.2.3", "192.168.1.5", "hub.example.org", "0.0.0.0", "::", "128.0.0.1", "", "a.localhost"],
)
def test_not_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


def _problem(url: str, allow: bool = False) -> str | None:
    return insecure_url_problem(url, allow_insecure_http=allow, setting="URL", allow_setting="OK")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://localhost:8080/",
        "http://[::1]:8080",
        "https://hub.example.org",
        "https://10.1.2.3:8443",
        "HTTPS://Hub.Example.org",
    ],
)
def test_allowed_urls(url: str) -> None:
    assert _problem(url) is None


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3:8080", "http://hub.example.org", "http://localhost.evil.org"]
)
def test_plain_http_off_the_loopback_is_refused_unless_allowed(url: str) -> None:
    problem = _problem(url)
    assert problem is not None and "URL" in problem and "OK=true" in problem
    assert _problem(url, allow=True) is None


@pytest.mark.parametrize("url", ["ftp://hub", "hub.example.org:8080", "https://", "http://"])
def test_malformed_urls_are_refused(url: str) -> None:
    assert _problem(url, allow=True) is not None


def test_agent_settings_check(tmp_path: Path) -> None:
    plain = AgentSettings(data_dir=tmp_path, hub_url="http://10.1.2.3:8080")
    with pytest.raises(ValueError, match="RELAYPACS_AGENT_ALLOW_INSECURE_HTTP"):
        plain.check_hub_url()
    AgentSettings(
        data_dir=tmp_path, hub_url="http://10.1.2.3:8080", allow_insecure_http=True
    ).check_hub_url()
    AgentSettings(data_dir=tmp_path).check_hub_url()  # the default, on the loopback
    AgentSettings(data_dir=tmp_path, hub_url="https://hub.example.org").check_hub_url()


def test_hub_ssl_context(tmp_path: Path) -> None:
    assert hub_ssl_context(None) is True  # httpx's default verification
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ctx = hub_ssl_context(tmp_path / "ca.pem")
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1
    with pytest.raises(FileNotFoundError):
        hub_ssl_context(tmp_path / "missing.pem")
    HubClient("https://localhost:1", ca_file=tmp_path / "ca.pem").close()
