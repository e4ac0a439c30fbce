"""Hub TLS settings: certificate and key together, and no plain HTTP off the loopback in
production unless a TLS-terminating proxy is declared."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaypacs_hub.config import HubSettings

# Random: production refuses guessable tokens.
_TOKEN = "3f9a1c7e5b2d4086a9e1f3c5b7d90e2a4c6b8d0f1e3a5c7b"


def test_certificate_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TLS_CERTFILE and RELAYPACS_HUB_TLS_KEYFILE"):
        HubSettings(data_dir=tmp_path, tls_certfile=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="TLS_CERTFILE and RELAYPACS_HUB_TLS_KEYFILE"):
        HubSettings(data_dir=tmp_path, tls_keyfile=tmp_path / "k.pem")
    s = HubSettings(data_dir=tmp_path, tls_certfile=tmp_path / "c", tls_keyfile=tmp_path / "k")
    assert s.tls_enabled
    assert not HubSettings(data_dir=tmp_path).tls_enabled


def test_production_refuses_plain_http_off_the_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without TLS in production"):
        HubSettings(environment="production", agent_token=_TOKEN, host="0.0.0.0")
    with pytest.raises(ValueError, match="ALLOW_PLAIN_HTTP"):
        HubSettings(environment="production", agent_token=_TOKEN, host="10.0.0.5")


@pytest.mark.parametrize(
    "extra",
    [
        {"host": "127.0.0.1"},
        {"host": "localhost"},
        {"host": "::1"},
        {"host": "0.0.0.0", "allow_plain_http": True},
        {"host": "0.0.0.0", "tls_certfile": Path("c.pem"), "tls_keyfile": Path("k.pem")},
    ],
)
def test_production_listens_when_safe(tmp_path: Path, extra: dict[str, object]) -> None:
    HubSettings(environment="production", agent_token=_TOKEN, data_dir=tmp_path, **extra)  # type: ignore[arg-type]


def test_development_may_listen_anywhere(tmp_path: Path) -> None:
    s = HubSettings(data_dir=tmp_path, host="0.0.0.0")
    s.check_listen("10.0.0.5")  # the --host option is checked the same way


def test_serve_checks_the_host_option(tmp_path: Path) -> None:
    s = HubSettings(environment="production", agent_token=_TOKEN, data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"10\.0\.0\.5"):
        s.check_listen("10.0.0.5")
