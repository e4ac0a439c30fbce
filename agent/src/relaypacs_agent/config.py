"""Agent settings, from ``RELAYPACS_AGENT_*`` environment variables (or a ``.env`` file).

Every setting is documented in the README's settings table; ``tests/test_docs.py`` checks that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RELAYPACS_AGENT_", env_file=".env", extra="ignore"
    )

    data_dir: Path = Field(
        default=Path("var/agent"),
        description="Folder for the agent's database, spool and quarantine.",
    )
    inbox: Path | None = Field(default=None, description="Watched folder. Empty: `data_dir/inbox`.")
    hub_url: str = Field(default="http://127.0.0.1:8080", description="Base URL of the hub.")
    hub_token: SecretStr | None = Field(
        default=None, description="Bearer token the hub expects from agents (if it requires one)."
    )
    service_level: Literal["routine", "stat"] = Field(
        default="routine", description="Service level of studies taken from the watched folder."
    )
    settle_seconds: float = Field(
        default=2.0,
        description="A file is complete once its size and mtime have not changed for this long.",
    )
    scan_interval_seconds: float = Field(
        default=1.0, description="How often the inbox is rescanned (events also wake the scan)."
    )
    quiet_period_seconds: float = Field(
        default=10.0,
        description="A study is sent once no new instance has arrived for this long.",
    )
    status_poll_seconds: float = Field(
        default=5.0, description="How often the agent asks the hub about studies it committed."
    )
    retry_max_seconds: float = Field(
        default=30.0,
        description="Cap of the backoff between attempts to reach the hub, so a link that comes "
        "back is used within this long.",
    )
    request_timeout_seconds: float = Field(
        default=120.0, description="Read/write timeout of one request to the hub."
    )
    max_instance_bytes: int = Field(
        default=4 * 1024**3, description="Largest single file accepted, in bytes."
    )
    log_json: bool = Field(default=False, description="Log JSON lines instead of console text.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    @property
    def resolved_inbox(self) -> Path:
        return (self.inbox or self.data_dir / "inbox").resolve()

    @property
    def spool_dir(self) -> Path:
        return (self.data_dir / "spool").resolve()

    @property
    def quarantine_dir(self) -> Path:
        return (self.data_dir / "quarantine").resolve()

    @property
    def db_path(self) -> Path:
        return (self.data_dir / "agent.db").resolve()
