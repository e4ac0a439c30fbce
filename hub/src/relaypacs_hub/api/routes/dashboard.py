"""The web dashboard: the built PWA (``pwa/dist``) served at ``/dashboard/``; and its upload app
(``index.html``, the one agents serve on the LAN) at ``/upload/``, for people with no agent
nearby: it sends straight to the hub over the protocol agents use (manifest, tus segments,
commit, status), and ``/upload/config.json`` tells it that it runs on the hub.

Public routes (the app itself holds no data; it calls the API with the user's token). Files are
resolved inside the build folder and refused outside it; hashed ``assets/`` are cached for good,
everything else is revalidated. Every answer carries a strict Content-Security-Policy (the upload
app's allows what it needs: a service worker, its manifest, ``blob:`` previews). Without a build,
``/dashboard/`` and ``/upload/`` answer 503 with a page that says how to build it.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from relaypacs_hub.api.deps import PublicAccess, State
from relaypacs_hub.config import HubSettings
from relaypacs_shared.wire import API_PREFIX

router = APIRouter(tags=["dashboard"], include_in_schema=False)

ENTRY = "dashboard.html"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".wasm": "application/wasm",
    ".map": "application/json",
}
NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RelayPACS dashboard</title></head>
<body><h1>RelayPACS dashboard</h1>
<p>The dashboard is not built: run <code>make pwa</code>.</p></body></html>
"""


def find_pwa_dir(settings: HubSettings) -> Path | None:
    """The build folder: ``pwa_dir`` when set, else the first ``pwa/dist`` holding a dashboard
    found walking up from this package (a source checkout); None when there is none."""
    if settings.pwa_dir is not None:
        return settings.pwa_dir
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "pwa" / "dist"
        if (candidate / ENTRY).is_file():
            return candidate
    return None


def resolve_inside(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names inside ``root``; None for anything that could lead outside it
    (a ``..`` or other dot segment, an absolute path, a symlink leading out), a hidden name, a
    folder, or no such file."""
    if "\x00" in relative or any(part.startswith(".") for part in Path(relative).parts):
        return None
    try:
        base = root.resolve()
        target = (base / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target


def _not_built() -> HTMLResponse:
    return HTMLResponse(
        NOT_BUILT, status_code=503, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"}
    )


def serve_file(path: Path, cache: str, security: dict[str, str] = SECURITY_HEADERS) -> FileResponse:
    """A file of the build, with its type, the security headers and ``cache``."""
    media_type = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    return FileResponse(
        path,
        media_type=media_type or "application/octet-stream",
        headers={**security, "Cache-Control": cache},
    )


def cache_rule(root_dir: Path, target: Path) -> str:
    """Vite names what it puts in assets/ by content hash (a changed file gets a new name):
    cached for good; everything else revalidated."""
    immutable = target.relative_to(root_dir.resolve()).parts[0] == "assets"
    return IMMUTABLE if immutable else REVALIDATE


@router.get("/")
async def root(_auth: PublicAccess) -> RedirectResponse:
    return RedirectResponse("/dashboard/", status_code=307)


@router.get("/dashboard")
async def dashboard_redirect(_auth: PublicAccess) -> RedirectResponse:
    return RedirectResponse("/dashboard/", status_code=307)


@router.get("/dashboard/")
async def dashboard(state: State, _auth: PublicAccess) -> Response:
    root_dir = find_pwa_dir(state.settings)
    entry = resolve_inside(root_dir, ENTRY) if root_dir is not None else None
    if entry is None:
        return _not_built()
    return serve_file(entry, REVALIDATE)


@router.get("/dashboard/{path:path}")
async def dashboard_file(path: str, state: State, _auth: PublicAccess) -> Response:
    root_dir = find_pwa_dir(state.settings)
    if root_dir is None or resolve_inside(root_dir, ENTRY) is None:
        return _not_built()
    target = resolve_inside(root_dir, path)
    if target is None:
        raise HTTPException(404, {"code": "not_found", "detail": "no such dashboard file"})
    return serve_file(target, cache_rule(root_dir, target))


# -- the upload app ----------------------------------------------------------------------------

UPLOAD_ENTRY = "index.html"
# 'wasm-unsafe-eval': the app hashes files with a WebAssembly SHA-256 (hash-wasm), nothing else.
UPLOAD_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
    "img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; connect-src 'self'; worker-src 'self'; "
    "manifest-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
UPLOAD_NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RelayPACS</title></head>
<body><h1>RelayPACS upload app</h1>
<p>The upload app is not built: run <code>make pwa</code>.</p></body></html>
"""


def _upload_not_built() -> HTMLResponse:
    return HTMLResponse(
        UPLOAD_NOT_BUILT,
        status_code=503,
        headers={**UPLOAD_SECURITY_HEADERS, "Cache-Control": "no-store"},
    )


@router.get("/upload")
async def upload_redirect(_auth: PublicAccess) -> RedirectResponse:
    return RedirectResponse("/upload/", status_code=307)


@router.get("/upload/")
async def upload_app(state: State, _auth: PublicAccess) -> Response:
    root_dir = find_pwa_dir(state.settings)
    entry = resolve_inside(root_dir, UPLOAD_ENTRY) if root_dir is not None else None
    if entry is None:
        return _upload_not_built()
    return serve_file(entry, REVALIDATE, UPLOAD_SECURITY_HEADERS)


@router.get("/upload/config.json")
async def upload_config(state: State, _auth: PublicAccess) -> JSONResponse:
    """What the app needs to know where it runs: on the hub (not an agent), its API, and whether
    uploading from here needs a TOTP second factor."""
    return JSONResponse(
        {
            "target": "hub",
            "api": API_PREFIX,
            "require_totp": state.settings.direct_upload_require_totp,
        },
        headers={**UPLOAD_SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


@router.get("/upload/{path:path}")
async def upload_file(path: str, state: State, _auth: PublicAccess) -> Response:
    root_dir = find_pwa_dir(state.settings)
    entry = resolve_inside(root_dir, UPLOAD_ENTRY) if root_dir is not None else None
    if root_dir is None or entry is None:
        return _upload_not_built()
    target = resolve_inside(root_dir, path)
    if target is not None:
        return serve_file(target, cache_rule(root_dir, target), UPLOAD_SECURITY_HEADERS)
    if path.startswith("api/") or "." in path.rsplit("/", 1)[-1]:
        raise HTTPException(404, {"code": "not_found", "detail": "no such file of the upload app"})
    # The app's own pages (client-side routes): its entry, which routes them.
    return serve_file(entry, REVALIDATE, UPLOAD_SECURITY_HEADERS)
