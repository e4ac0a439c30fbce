"""The agent's device credential: enrolled once with a one-time code, kept in
``data_dir/credential.json`` (mode 0600, written atomically), renewed on demand.

Requests carry ``Authorization: Bearer rpd_<device_id>.<secret>`` when the file exists, else the
legacy ``hub_token``. The file is read again when it changes, so a running agent picks up a
renewed secret at its next request.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

FILENAME = "credential.json"


@dataclass(frozen=True)
class Credential:
    hub_url: str
    device_id: str
    facility: str
    secret: str

    @property
    def bearer(self) -> str:
        return f"rpd_{self.device_id}.{self.secret}"


def credential_path(data_dir: Path) -> Path:
    return data_dir / FILENAME


def load_credential(path: Path) -> Credential | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return Credential(
        hub_url=str(raw.get("hub_url", "")),
        device_id=str(raw["device_id"]),
        facility=str(raw.get("facility", "")),
        secret=str(raw["secret"]),
    )


def write_credential(path: Path, cred: Credential) -> None:
    """Write atomically, readable by the agent's user only (0600 from creation on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".credential-", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(cred), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


class CredentialFile:
    """The credential in ``path``, read again only when the file changes (renewal, enrollment);
    None while there is none."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._cred: Credential | None = None

    def current(self) -> Credential | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._cred = None, None
            return None
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            self._cred = load_credential(self.path)
            self._stamp = stamp
        return self._cred


class CredentialAuth(httpx.Auth):
    """Bearer the device credential of ``path`` when present (re-read when it changes), else
    ``fallback_token`` (the legacy agent token), else nothing."""

    def __init__(self, path: Path | None, fallback_token: str | None = None) -> None:
        self.file = CredentialFile(path)
        self.fallback = fallback_token

    def token(self) -> str | None:
        cred = self.file.current()
        return cred.bearer if cred is not None else self.fallback

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request
