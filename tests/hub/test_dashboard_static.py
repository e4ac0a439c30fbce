"""The hub serves the built dashboard at /dashboard/: headers, caching, no way out of the build
folder, and a clear 503 when there is no build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relaypacs_hub.api.routes import dashboard
from relaypacs_hub.config import HubSettings
from tests.hub.authfix import auth_settings, hub_client

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; frame-ancestors 'none'"
)
SECRET = "not-for-the-web"


def _dist(tmp_path: Path) -> Path:
    dist = tmp_path / "pwa" / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "dashboard.html").write_text(
        '<!doctype html><title>Dashboard</title><script type="module" src="./assets/app.js">'
        "</script>"
    )
    (dist / "index.html").write_text("<!doctype html><title>Agent</title>")
    (dist / "assets" / "app.js").write_text("console.log('dashboard')")
    (dist / "sw.js").write_text("self.addEventListener('fetch', () => {})")
    (dist / "manifest.webmanifest").write_text('{"name": "RelayPACS"}')
    (dist / ".env").write_text(SECRET)
    (tmp_path / "pwa" / "secret.txt").write_text(SECRET)
    (tmp_path / "secret.txt").write_text(SECRET)
    return dist


def _settings(tmp_path: Path, pwa_dir: Path | None) -> HubSettings:
    return auth_settings(tmp_path, pwa_dir=pwa_dir)


def _secured(headers: Any) -> None:
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


async def test_the_dashboard_and_its_files_are_served(tmp_path: Path) -> None:
    async with hub_client(_settings(tmp_path, _dist(tmp_path))) as (_app, client):
        for path in ("/", "/dashboard"):
            r = await client.get(path)
            assert r.status_code == 307
            assert r.headers["location"] == "/dashboard/"
        r = await client.get("/dashboard/")
        assert r.status_code == 200
        assert "<title>Dashboard</title>" in r.text
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["cache-control"] == "no-cache"
        _secured(r.headers)
        r = await client.get("/", follow_redirects=True)
        assert r.status_code == 200 and "<title>Dashboard</title>" in r.text

        r = await client.get("/dashboard/assets/app.js")
        assert r.status_code == 200
        assert r.text == "console.log('dashboard')"
        assert r.headers["content-type"].startswith("text/javascript")
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        _secured(r.headers)

        r = await client.get("/dashboard/sw.js")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
        r = await client.get("/dashboard/manifest.webmanifest")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/manifest+json")
        r = await client.get("/dashboard/index.html")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
        assert (await client.get("/dashboard/assets/missing.js")).status_code == 404
        assert (await client.get("/dashboard/assets")).status_code == 404  # a folder


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/%2e%2e/secret.txt",
        "/dashboard/..%2fsecret.txt",
        "/dashboard/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/dashboard/assets/..%2f..%2fsecret.txt",
        "/dashboard/assets/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/dashboard/%2f" + "etc%2fpasswd",
        "/dashboard/.env",
        "/dashboard/assets/%00app.js",
        "/dashboard/..%5csecret.txt",
    ],
)
async def test_no_file_outside_the_build_is_served(tmp_path: Path, path: str) -> None:
    async with hub_client(_settings(tmp_path, _dist(tmp_path))) as (_app, client):
        r = await client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert SECRET not in r.text and "root:" not in r.text


def test_resolve_inside_refuses_escapes(tmp_path: Path) -> None:
    dist = _dist(tmp_path)
    (dist / "assets" / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert dashboard.resolve_inside(dist, "assets/app.js") == (dist / "assets/app.js").resolve()
    # Dot segments are refused outright, even those that stay inside.
    for bad in (
        "assets/../dashboard.html",
        "../secret.txt",
        "/etc/passwd",
        str(tmp_path / "secret.txt"),
        "assets/link.txt",
    ):
        assert dashboard.resolve_inside(dist, bad) is None, bad
    assert dashboard.resolve_inside(dist, "assets") is None
    assert dashboard.resolve_inside(tmp_path / "nowhere", "dashboard.html") is None


@pytest.mark.parametrize("which", ["empty", "missing"])
async def test_without_a_build_the_dashboard_says_how_to_build_it(
    tmp_path: Path, which: str
) -> None:
    folder = tmp_path / "dist"
    if which == "empty":
        folder.mkdir()
        (folder / "assets").mkdir()
        (folder / "assets" / "app.js").write_text("x")
    async with hub_client(_settings(tmp_path, folder)) as (_app, client):
        for path in ("/dashboard/", "/dashboard/assets/app.js"):
            r = await client.get(path)
            assert r.status_code == 503
            assert r.headers["content-type"].startswith("text/html")
            assert "The dashboard is not built: run <code>make pwa</code>" in r.text
            _secured(r.headers)
        assert (await client.get("/healthz")).status_code == 200


def test_the_build_is_found_in_the_source_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = _dist(tmp_path)
    package = tmp_path / "hub" / "src" / "relaypacs_hub" / "api" / "routes"
    package.mkdir(parents=True)
    monkeypatch.setattr(dashboard, "__file__", str(package / "dashboard.py"))
    settings = HubSettings(data_dir=tmp_path / "hub-data")
    assert settings.pwa_dir is None
    assert dashboard.find_pwa_dir(settings) == dist
    (dist / "dashboard.html").unlink()
    assert dashboard.find_pwa_dir(settings) is None
    # Set explicitly, the folder is used as given (built or not).
    explicit = HubSettings(data_dir=tmp_path / "hub-data", pwa_dir=tmp_path / "elsewhere")
    assert dashboard.find_pwa_dir(explicit) == tmp_path / "elsewhere"


def test_the_dashboard_routes_are_not_in_the_api_schema(tmp_path: Path) -> None:
    from relaypacs_hub.main import create_app

    paths = create_app(_settings(tmp_path, None)).openapi()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/dashboard")]
    assert "/api/v1/studies" in paths and "/api/v1/stats" in paths
