"""Destination configuration: a pydantic discriminated union on ``type``.

The destinations file (TOML) looks like::

    [[destinations]]
    name = "archive"
    type = "folder"
    path = "var/demo/archive"

    [[destinations]]
    name = "orthanc"
    type = "dicomweb"
    profile = "orthanc"                       # generic | orthanc | dcm4chee-arc
    url = "http://127.0.0.1:8042/dicom-web"

    [[destinations]]
    name = "dcm4chee"
    type = "dicomweb"
    profile = "dcm4chee-arc"
    url = "https://pacs.example.org:8443"     # the archive's base URL
    aet = "DCM4CHEE"                          # -> /dcm4chee-arc/aets/DCM4CHEE/rs
    [destinations.oidc]                       # bearer token by OAuth 2.0 client credentials
    token_url = "https://pacs.example.org:8843/realms/dcm4che/protocol/openid-connect/token"
    client_id = "relaypacs"
    client_secret = "..."

    [[destinations]]
    name = "legacy"
    type = "dimse"                            # C-STORE, confirmed by C-FIND where configured
    host = "10.0.0.5"
    port = 104
    called_aet = "PACS"
    calling_aet = "RELAYPACS"
    confirm = "c-find"                        # or "c-store" (trust the C-STORE responses)

Every destination has ``max_concurrent_jobs``: how many studies may be in flight to it at once,
across all hub workers.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, model_validator

_AET = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # PS3.5 AE VR: 16 chars, no backslash


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    max_concurrent_jobs: int = Field(
        default=2, ge=1, le=64, description="Studies in flight to this destination at once."
    )


class FolderDestinationConfig(_Base):
    """Writes ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` under ``path``."""

    type: Literal["folder"] = "folder"
    path: Path


class OidcClientCredentials(BaseModel):
    """OAuth 2.0 client credentials grant (RFC 6749 4.4) against an OpenID Connect provider.

    For dcm4chee-arc secured with Keycloak the token endpoint is
    ``https://<keycloak>:8843/realms/<realm>/protocol/openid-connect/token`` (Keycloak 18+;
    older ones and ``KC_HTTP_RELATIVE_PATH=/auth`` put ``/auth`` before ``/realms``).
    """

    model_config = ConfigDict(extra="forbid")
    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str | None = None
    verify_tls: bool = True


class DicomWebDestinationConfig(_Base):
    """A DICOMweb archive: STOW-RS to send, QIDO-RS to confirm (Orthanc, dcm4chee-arc, ...)."""

    type: Literal["dicomweb"] = "dicomweb"
    profile: Literal["generic", "orthanc", "dcm4chee-arc"] = "generic"
    url: str = Field(
        description="generic: the DICOMweb root; orthanc: Orthanc's URL (with or without "
        "/dicom-web); dcm4chee-arc: the archive's base URL, e.g. https://host:8443"
    )
    aet: str | None = Field(
        default=None, pattern=_AET, description="dcm4chee-arc: the archive AE title"
    )
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    oidc: OidcClientCredentials | None = None
    timeout_seconds: float = 60.0
    max_batch_instances: int = Field(default=50, ge=1)
    max_batch_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_parallel_requests: int = Field(
        default=2,
        ge=1,
        le=8,
        description="STOW-RS requests of one study in flight at once (streamed bodies only): "
        "the archive stores one batch while the next is on the wire",
    )
    verify_tls: bool = True

    @model_validator(mode="after")
    def _profile(self) -> DicomWebDestinationConfig:
        # Conflicting authentication settings are refused when the destination is built
        # (RoutingError), so the message names the destination the same way for every type.
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"{self.name}: url must start with http:// or https://")
        if self.profile == "dcm4chee-arc" and "/aets/" not in self.url and not self.aet:
            raise ValueError(f"{self.name}: the dcm4chee-arc profile needs aet (e.g. DCM4CHEE)")
        return self

    @property
    def service_url(self) -> str:
        """The DICOMweb root the requests go to (``.../studies`` is appended)."""
        url = self.url.rstrip("/")
        if self.profile == "orthanc" and not url.endswith("/dicom-web"):
            return url + "/dicom-web"
        if self.profile == "dcm4chee-arc" and "/aets/" not in url:
            if not url.endswith("/dcm4chee-arc"):
                url += "/dcm4chee-arc"
            return f"{url}/aets/{self.aet}/rs"
        return url


class DimseDestinationConfig(_Base):
    """A DIMSE archive: C-STORE (pynetdicom) to send; C-FIND to confirm where configured."""

    type: Literal["dimse"] = "dimse"
    host: str
    port: int = Field(ge=1, le=65535)
    called_aet: Annotated[str, Field(pattern=_AET)]
    calling_aet: Annotated[str, Field(pattern=_AET)] = "RELAYPACS"
    confirm: Literal["c-find", "c-store"] = Field(
        default="c-store",
        description="c-find: ask the archive (Study Root C-FIND) what it holds; c-store: a "
        "success status of the C-STORE is the confirmation (for archives without C-FIND)",
    )
    transfer_syntaxes: Literal["original", "original-or-uncompressed"] = Field(
        default="original-or-uncompressed",
        description="Propose each instance's own transfer syntax, plus Explicit and Implicit "
        "VR Little Endian for uncompressed instances",
    )
    max_pdu: int = Field(default=0, ge=0, description="0: unlimited")
    timeout_seconds: float = 60.0
    batch_instances: int = Field(default=50, ge=1, description="Progress is recorded this often")


AnyDestinationConfig = FolderDestinationConfig | DicomWebDestinationConfig | DimseDestinationConfig
DestinationConfig = Annotated[AnyDestinationConfig, Field(discriminator="type")]


class DestinationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    destinations: list[DestinationConfig] = Field(default_factory=list)


_adapter = TypeAdapter(DestinationsFile)


def load_destinations(path: Path) -> list[AnyDestinationConfig]:
    """Read and validate a destinations file; relative folder paths resolve against its folder."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    parsed = _adapter.validate_python(data)
    names = [d.name for d in parsed.destinations]
    if len(names) != len(set(names)):
        raise ValueError(f"{path}: destination names must be unique, got {names}")
    out: list[AnyDestinationConfig] = []
    for dest in parsed.destinations:
        if isinstance(dest, FolderDestinationConfig) and not dest.path.is_absolute():
            dest = dest.model_copy(update={"path": (path.parent / dest.path).resolve()})
        out.append(dest)
    return out
