"""Hub settings, from ``RELAYPACS_HUB_*`` environment variables (or a ``.env`` file).

Every setting is documented in the README's settings table; ``tests/test_docs.py`` checks that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAYPACS_HUB_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = Field(
        default="development",
        description="`production` refuses unsafe defaults (a missing or short agent token).",
    )
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8080, description="Port the API listens on.")
    data_dir: Path = Field(
        default=Path("var/hub"), description="Folder for the embedded database and object store."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL, e.g. `postgresql+asyncpg://user@host/db`. "
        "Empty: SQLite file in `data_dir` (embedded default).",
    )
    object_store_dir: Path | None = Field(
        default=None, description="Local object store folder. Empty: `data_dir/objects`."
    )
    destinations_file: Path | None = Field(
        default=None, description="TOML file listing the PACS destinations (see README)."
    )
    agent_token: SecretStr | None = Field(
        default=None,
        description="Bearer token agents must present. Required in production; "
        "replaced by device enrollment later.",
    )
    max_instance_bytes: int = Field(
        default=4 * 1024**3, description="Largest single DICOM instance accepted, in bytes."
    )
    worker_enabled: bool = Field(
        default=True, description="Run the forwarding worker inside `relaypacs-hub serve`."
    )
    worker_poll_seconds: float = Field(
        default=1.0, description="How often an idle forwarding worker looks for due jobs."
    )
    forward_max_attempts: int = Field(
        default=30, description="Attempts before a forwarding job is parked as dead."
    )
    forward_backoff_max_seconds: float = Field(
        default=300.0, description="Cap of the exponential backoff between forwarding attempts."
    )
    job_lease_seconds: float = Field(
        default=600.0,
        description="A running job whose worker vanished is taken over after this long.",
    )
    upload_max_bytes: int = Field(
        default=8 * 1024**3, description="Largest tus upload (Tus-Max-Size), in bytes."
    )
    upload_expiry_seconds: float = Field(
        default=24 * 3600.0,
        description="An unfinished tus upload expires this long after its last PATCH.",
    )
    upload_dir: Path | None = Field(
        default=None, description="Folder for unfinished tus uploads. Empty: `data_dir/uploads`."
    )
    log_json: bool = Field(default=False, description="Log JSON lines instead of console text.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> HubSettings:
        if self.environment == "production":
            token = self.agent_token.get_secret_value() if self.agent_token else ""
            if len(token) < 32:
                raise ValueError(
                    "RELAYPACS_HUB_AGENT_TOKEN must be set to at least 32 characters in production"
                )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'hub.db').resolve()}"

    @property
    def resolved_upload_dir(self) -> Path:
        return (self.upload_dir or self.data_dir / "uploads").resolve()

    @property
    def resolved_object_store_dir(self) -> Path:
        return (self.object_store_dir or self.data_dir / "objects").resolve()
