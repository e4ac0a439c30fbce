"""Agent settings, from ``RELAYPACS_AGENT_*`` environment variables (or a ``.env`` file).

Every setting needs a description: ``docs/configuration.md`` is generated from them (``make docs``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relaypacs_shared.netpolicy import insecure_url_problem
from relaypacs_shared.wire import ServiceLevel

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, no backslash


class WatchFolder(BaseModel):
    """One watched folder of ``RELAYPACS_AGENT_WATCH_FOLDERS`` and the defaults of what it gives."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    name: str = Field(default="", description="Shown in logs and status; default: folder name.")
    service_level: ServiceLevel = "routine"
    mode: Literal["move", "copy"] = "move"
    settle_seconds: float | None = None
    quiet_period_seconds: float | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v and not _NAME.match(v):
            raise ValueError("name: letters, digits, . _ - (at most 64)")
        return v

    @property
    def label(self) -> str:
        return self.name or self.path.name or "inbox"


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
    hub_ca_file: Path | None = Field(
        default=None,
        description="PEM bundle of the CA(s) to trust for the hub's certificate (e.g. a private "
        "CA). Empty: the system trust store.",
    )
    allow_insecure_http: bool = Field(
        default=False,
        description="Allow a plain `http://` hub_url off the loopback (a trusted private link). "
        "Off: the agent refuses to start with one.",
    )
    service_level: ServiceLevel = Field(
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
    follow_reports: bool = Field(
        default=True,
        description="Follow the hub's report feed for this facility and keep the reports "
        "(text, PDFs) at the agent, readable on the LAN with the WAN down.",
    )
    report_store_pacs: str | None = Field(
        default=None,
        description="Also store each report into the facility's own PACS by C-STORE, as "
        "`AE_TITLE@host:port` (a Basic Text SR, or an Encapsulated PDF, filed under the patient "
        "of the study's own images at this agent; the calling AE title is `dimse_ae_title`). "
        "Empty: reports stay at the agent and the LAN app.",
    )
    report_feed_wait_seconds: float = Field(
        default=25.0,
        gt=0,
        le=55,
        description="How long one long poll of the hub's report feed waits for a report.",
    )
    retry_max_seconds: float = Field(
        default=30.0,
        description="Cap of the backoff between attempts to reach the hub, so a link that comes "
        "back is used within this long.",
    )
    held_retry_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often a study the hub holds for its admin (another facility sent it "
        "first) is offered again.",
    )
    request_timeout_seconds: float = Field(
        default=120.0, description="Read/write timeout of one request to the hub."
    )
    max_instance_bytes: int = Field(
        default=4 * 1024**3, description="Largest single file accepted, in bytes."
    )
    watch_folders: list[WatchFolder] = Field(
        default_factory=list,
        description="More watched folders, as JSON: a list of objects with `path` and optional "
        "`name`, `service_level`, `mode` (`move` or `copy`), `settle_seconds`, "
        "`quiet_period_seconds` and `metadata` (facility metadata for the studies it gives).",
    )
    inbox_mode: Literal["move", "copy"] = Field(
        default="move",
        description="`move`: originals leave the inbox once spooled; `copy`: they stay and are "
        "remembered so they are not taken twice.",
    )
    min_free_bytes: int = Field(
        default=1024**3,
        description="Disk reserve: new work is refused while less than this would stay free on "
        "the spool's disk.",
    )
    max_sequence_depth: int = Field(
        default=16, description="Deepest sequence nesting accepted in an instance."
    )
    max_archive_bytes: int = Field(
        default=64 * 1024**3, description="Largest total a zip archive may expand to, in bytes."
    )
    max_archive_entries: int = Field(
        default=100_000, description="Most entries a zip archive may hold."
    )
    max_compression_ratio: float = Field(
        default=250.0,
        description="Highest expanded/compressed size ratio of a zip entry (above: a zip bomb).",
    )
    ingest_workers: int = Field(
        default=2, description="Files of a folder or archive taken in at once."
    )
    conformance_check: bool = Field(
        default=True,
        description="Check spooled instances with dciodvfy (dicom3tools) when installed; "
        "findings are warnings and never block.",
    )
    dimse_port: int = Field(
        default=0,
        description="Port of the DICOM C-STORE SCP; 0 turns it off (`make demo` uses 11112).",
    )
    dimse_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - modalities on the LAN must reach it
        description="Address the C-STORE SCP listens on.",
    )
    dimse_ae_title: str = Field(default="RELAYPACS", description="AE title of the C-STORE SCP.")
    dimse_allowed_calling_aets: str = Field(
        default="",
        description="Comma-separated calling AE titles allowed to associate; empty: any.",
    )
    dimse_service_level: ServiceLevel = Field(
        default="routine", description="Service level of studies received by C-STORE."
    )
    dimse_release_grace_seconds: float = Field(
        default=5.0,
        description="A study sent in one association is ready this long after its release.",
    )
    dimse_max_associations: int = Field(
        default=10, description="Most simultaneous C-STORE associations."
    )

    web_port: int = Field(
        default=8081,
        description="Port of the LAN web app (the PWA and its API) that phones and tablets open; "
        "0 turns it off.",
    )
    web_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - phones on the LAN must reach it
        description="Address the LAN web app listens on.",
    )
    web_tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate for the LAN web app. Browsers run the PWA's offline "
        "service worker only on HTTPS (or on localhost), so give one for phones on the LAN.",
    )
    web_tls_key: Path | None = Field(default=None, description="PEM private key of `web_tls_cert`.")
    pwa_dir: Path | None = Field(
        default=None,
        description="Folder of the built PWA. Empty: `pwa/dist` of the source checkout.",
    )
    web_session_hours: float = Field(default=12.0, description="How long a LAN login lasts.")
    heartbeat_seconds: float = Field(
        default=60.0,
        description="How often the agent reports its health to the hub (backlog, oldest waiting "
        "study, disk free, quarantine, version), which the hub exports for Prometheus. 0: never.",
    )
    agent_name: str | None = Field(
        default=None,
        max_length=128,
        description="The name an agent not enrolled as a device reports its heartbeat under. "
        "Empty: the host name. An enrolled device is named by its enrollment.",
    )
    verifier_sync_seconds: float = Field(
        default=300.0,
        description="How often the agent refreshes its copy of its facility's login verifiers "
        "from the hub (also at start and when an unknown username signs in).",
    )

    web_max_connections: int = Field(
        default=256,
        ge=16,
        description="Open connections the LAN web app holds at most (lowered to what the file "
        "limit allows); past it a new one displaces the oldest idle one, 503 when all are busy.",
    )
    web_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A request head must reach the LAN web app within this long; else 408.",
    )
    web_body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A request body that sends nothing for this long ends its connection (the "
        "PWA resumes its upload).",
    )

    @field_validator("dimse_ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        if not _AE_TITLE.match(v) or not v.strip():
            raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
        return v.strip()

    @field_validator("report_store_pacs")
    @classmethod
    def _pacs_address(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        from relaypacs_agent.report_store import PacsAddress

        return str(PacsAddress.parse(v.strip()))

    segment_min_bytes: int = Field(
        default=1024 * 1024, description="Smallest segment the uplink packs (bytes)."
    )
    segment_max_bytes: int = Field(
        default=32 * 1024 * 1024,
        description="Largest segment the uplink packs (bytes); the size adapts between the "
        "two to about 20 seconds of measured throughput.",
    )
    parallel_streams: int = Field(
        default=3,
        ge=1,
        le=16,
        description="Parallel connections for one segment (tus concatenation), which keeps a "
        "lossy link busy; 1: one connection.",
    )
    part_copies: int = Field(
        default=3,
        ge=0,
        le=8,
        description="Under loss, copies of a stalled part of a segment that free connections may "
        "send at once; the first the hub acknowledges whole counts (at 30% loss both ways this "
        "halves the time and puts about 50% more bytes on the link). 0: never, for a link "
        "billed by the megabyte.",
    )
    tcp_rto_max_ms: int = Field(
        default=1000,
        ge=0,
        le=120_000,
        description="Longest wait before TCP sends a lost segment again, however often it was "
        "lost (Linux 6.15+; the kernel's own backoff grows to 120 s and stalls a lossy link). "
        "0: the kernel's default. Ignored by older kernels.",
    )
    tcp_rto_min_ms: int = Field(
        default=50,
        ge=0,
        le=1000,
        description="Floor of TCP's retransmission timeout in ms (Linux 6.15+; the kernel's is "
        "200 ms). The timeout still follows the measured round trip. 0: the kernel's default.",
    )
    bandwidth_limit_kbps: int = Field(
        default=0,
        description="Cap on upload bandwidth in kilobits per second, so the agent does not "
        "starve the facility's link. 0: no cap.",
    )
    routine_window: str | None = Field(
        default=None,
        description="Local time window `HH:MM-HH:MM` (may wrap midnight) outside which routine "
        "studies wait; STAT studies always go. Empty: any time.",
    )
    log_json: bool = Field(default=False, description="Log JSON lines instead of console text.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    def check_hub_url(self) -> None:
        """Refuse plain HTTP to a hub off the loopback unless explicitly allowed."""
        problem = insecure_url_problem(
            self.hub_url,
            allow_insecure_http=self.allow_insecure_http,
            setting="RELAYPACS_AGENT_HUB_URL",
            allow_setting="RELAYPACS_AGENT_ALLOW_INSECURE_HTTP",
        )
        if problem:
            raise ValueError(problem)

    @property
    def allowed_calling_aets(self) -> list[str]:
        return [a.strip() for a in self.dimse_allowed_calling_aets.split(",") if a.strip()]

    @property
    def folders(self) -> list[WatchFolder]:
        """Every watched folder: the inbox with the agent's defaults, then the configured ones."""
        inbox = WatchFolder(
            path=self.resolved_inbox,
            name="inbox",
            service_level=self.service_level,
            mode=self.inbox_mode,
        )
        out = [inbox]
        for f in self.watch_folders:
            out.append(f.model_copy(update={"path": f.path.resolve()}))
        labels = [f.label for f in out]
        if len(set(labels)) != len(labels):
            raise ValueError(f"watched folders need distinct names, got {labels}")
        return out

    @property
    def incoming_dir(self) -> Path:
        """Files the agent writes itself before they are spooled (C-STORE, archive members)."""
        return (self.data_dir / "incoming").resolve()

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
