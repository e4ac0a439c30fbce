"""Destination configuration: a pydantic discriminated union on ``type``.

The destinations file (TOML) looks like::

    [[destinations]]
    name = "archive"
    type = "folder"
    path = "var/demo/archive"

    [[destinations]]
    name = "orthanc"
    type = "dicomweb"
    url = "http://127.0.0.1:8042/dicom-web"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class FolderDestinationConfig(_Base):
    """Writes ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` under ``path``."""

    type: Literal["folder"] = "folder"
    path: Path


class DicomWebDestinationConfig(_Base):
    """A DICOMweb archive: STOW-RS to send, QIDO-RS to confirm (Orthanc, dcm4chee-arc, ...)."""

    type: Literal["dicomweb"] = "dicomweb"
    url: str = Field(description="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    timeout_seconds: float = 60.0
    max_batch_instances: int = Field(default=50, ge=1)
    max_batch_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    verify_tls: bool = True


DestinationConfig = Annotated[
    FolderDestinationConfig | DicomWebDestinationConfig, Field(discriminator="type")
]


class DestinationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    destinations: list[DestinationConfig] = Field(default_factory=list)


_adapter = TypeAdapter(DestinationsFile)


def load_destinations(path: Path) -> list[FolderDestinationConfig | DicomWebDestinationConfig]:
    """Read and validate a destinations file; relative folder paths resolve against its folder."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    parsed = _adapter.validate_python(data)
    names = [d.name for d in parsed.destinations]
    if len(names) != len(set(names)):
        raise ValueError(f"{path}: destination names must be unique, got {names}")
    out: list[FolderDestinationConfig | DicomWebDestinationConfig] = []
    for dest in parsed.destinations:
        if isinstance(dest, FolderDestinationConfig) and not dest.path.is_absolute():
            dest = dest.model_copy(update={"path": (path.parent / dest.path).resolve()})
        out.append(dest)
    return out
