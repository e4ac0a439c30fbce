"""Storing report objects into an archive by STOW-RS, as a reporting system would."""

from __future__ import annotations

import secrets

import httpx


def stow(dicomweb_url: str, *objects: bytes) -> None:
    """STOW-RS the DICOM objects into the archive in one request; fails unless all are stored."""
    boundary = secrets.token_hex(16)
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + o + b"\r\n"
        for o in objects
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    r = httpx.post(
        f"{dicomweb_url}/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )
    assert r.status_code == 200, f"STOW-RS answered {r.status_code}: {r.text[:300]}"
