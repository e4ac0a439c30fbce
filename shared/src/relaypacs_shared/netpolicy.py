"""Which addresses count as the loopback, for the "TLS everywhere off the loopback" rule."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1 (brackets allowed); no other name counts."""
    h = host.strip().strip("[]").rstrip(".").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def insecure_url_problem(
    url: str, *, allow_insecure_http: bool, setting: str, allow_setting: str
) -> str | None:
    """Why ``url`` must not be used (plain HTTP off the loopback, or an unknown scheme), or None."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "https":
        if not parts.hostname:
            return f"{setting} has no host: {url!r}"
        return None
    if scheme != "http":
        return f"{setting} must be an http:// or https:// URL, got {url!r}"
    host = parts.hostname or ""
    if not host:
        return f"{setting} has no host: {url!r}"
    if is_loopback_host(host) or allow_insecure_http:
        return None
    return (
        f"{setting} is plain http:// to {host}, which is not the loopback: the hub must be "
        f"reached over https:// (its certificate verified). Set {allow_setting}=true only for "
        "a trusted private link."
    )
