"""Hub settings, from ``RELAYPACS_HUB_*`` environment variables (or a ``.env`` file).

Every setting needs a description: ``docs/configuration.md`` is generated from them (``make docs``).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relaypacs_shared.netpolicy import is_loopback_host

# Defaults of MinIO, of its docker examples and of the AWS documentation: never in production.
_WELL_KNOWN_S3_SECRETS = frozenset(
    {"minioadmin", "minio123", "testing", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
)


# Bits a production token must carry by the estimate of ``secret_bits`` (a random 32-character
# hex token estimates at about 115, `openssl rand -hex 32` at about 240; 36 x "a" at 0).
MIN_SECRET_BITS = 96


def secret_bits(value: str) -> float:
    """Estimated entropy of a secret: the Shannon entropy of its characters times the number of
    characters that do not repeat earlier text (runs of 3 or more that occurred before count for
    nothing).

    Not a proof of randomness, but it refuses what people type by hand: one character repeated,
    a word or a digit run written several times.
    """
    n = len(value)
    if not n:
        return 0.0
    counts = Counter(value)
    per_char = -sum(c / n * math.log2(c / n) for c in counts.values())
    novel, i = 0, 0
    while i < n:
        longest = 0
        for j in range(i):
            k = 0
            while i + k < n and value[j + k] == value[i + k]:
                k += 1
            longest = max(longest, k)
        if longest >= 3:
            i += longest
        else:
            novel += 1
            i += 1
    return novel * per_char


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAYPACS_HUB_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = Field(
        default="development",
        description="`production` refuses unsafe defaults (a missing or short agent token, a "
        "CHANGE-ME placeholder left from an example env file).",
    )
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8080, description="Port the API listens on.")
    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (with its chain) the API serves HTTPS with; set together "
        "with `tls_keyfile`. Empty: plain HTTP.",
    )
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of `tls_certfile`.")
    allow_plain_http: bool = Field(
        default=False,
        description="Let production listen on a non-loopback address without TLS: only when a "
        "TLS-terminating reverse proxy in front of the hub serves HTTPS to the agents.",
    )
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
        default=None, description="TOML file listing the PACS destinations (docs/operations.md)."
    )
    agent_token: SecretStr | None = Field(
        default=None,
        description="Legacy shared bearer token agents may present instead of an enrolled "
        "device credential. Required in production while `allow_agent_token` is on.",
    )
    allow_agent_token: bool = Field(
        default=True,
        description="Accept the legacy `agent_token` on agent routes. Turn off once every agent "
        "is enrolled: then only device credentials (`relaypacs-agent enroll`) are accepted.",
    )
    max_instance_bytes: int = Field(
        default=4 * 1024**3, description="Largest single DICOM instance accepted, in bytes."
    )
    worker_enabled: bool = Field(
        default=True, description="Run the forwarding worker inside `relaypacs-hub serve`."
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="Address a `relaypacs-hub worker` serves its Prometheus metrics on "
        "(`/metrics`); `0.0.0.0` to let a Prometheus on another host scrape it.",
    )
    worker_metrics_port: int = Field(
        default=9464,
        description="Port of a `relaypacs-hub worker`'s Prometheus metrics. 0: not served.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token Prometheus presents to scrape the hub's `/metrics` from off the "
        "loopback. Empty: `/metrics` answers only the loopback.",
    )
    report_webhook_token: SecretStr | None = Field(
        default=None,
        description="Bearer token an archive presents to `POST /api/v1/reports/archive-changes` "
        "to say a study changed there (the Orthanc Python-plugin script in `deploy/orthanc/`), so "
        "its report is fetched at once instead of at the next poll. Empty: the route is closed.",
    )
    readiness_timeout_seconds: float = Field(
        default=3.0,
        description="How long `/readyz` waits for each dependency (database, object store, "
        "Redis) before calling it failed.",
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
    worker_concurrency: int = Field(
        default=4, ge=1, le=64, description="Forwarding jobs one worker process runs at once."
    )
    rules_file: Path | None = Field(
        default=None,
        description="TOML routing rules (docs/operations.md). Set: the file is the truth, "
        "imported at start and by `POST /api/v1/rules/reload`. Empty: rules are edited through "
        "the API.",
    )
    retention_hours: float | None = Field(
        default=None,
        ge=0,
        description="Hours after every destination confirmed a study before its instances "
        "leave the object store. Empty: kept.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Machine bearer token for the admin API (jobs, rules, destinations, users), "
        "besides the JWTs of users with role admin. Empty: only admin users.",
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
    object_store: Literal["local", "s3"] = Field(
        default="local",
        description="Where DICOM bytes and unfinished uploads live: `local` folders in `data_dir`, "
        "or `s3` (a MinIO or other S3 bucket, shared by every hub replica).",
    )
    s3_endpoint: str = Field(
        default="", description="S3 endpoint as `host:port`, no scheme (e.g. `minio.lan:9000`)."
    )
    s3_access_key: str = Field(default="", description="S3 access key.")
    s3_secret_key: SecretStr = Field(
        default=SecretStr(""),
        description="S3 secret key. Production refuses an empty or well-known one.",
    )
    s3_bucket: str = Field(
        default="relaypacs", description="Bucket for DICOM objects and uploads; it must exist."
    )
    s3_region: str = Field(default="us-east-1", description="Region of the bucket.")
    s3_secure: bool = Field(
        default=True,
        description="HTTPS to the S3 endpoint (CA: `SSL_CERT_FILE`, else the system store).",
    )
    s3_prefix: str = Field(
        default="",
        description="Key prefix in the bucket (e.g. `hub-a/`), so deployments can share a bucket.",
    )
    jwt_private_key_file: Path | None = Field(
        default=None,
        description="PEM Ed25519 private key that signs access tokens (EdDSA). Required in "
        "production; in development generated into `data_dir/jwt-signing-key.pem` (mode 0600).",
    )
    jwt_issuer: str = Field(default="relaypacs-hub", description="`iss` of access tokens.")
    jwt_audience: str = Field(default="relaypacs", description="`aud` of access tokens.")
    access_token_minutes: float = Field(
        default=10.0, gt=0, description="Lifetime of an access token (JWT), in minutes."
    )
    refresh_token_days: float = Field(
        default=14.0, gt=0, description="Lifetime of a refresh token, in days; it rotates on use."
    )
    require_totp_roles: str = Field(
        default="",
        description="Comma list of roles that must use a TOTP second factor (e.g. `admin,"
        "radiologist`); such a user without one gets a token that can only enroll.",
    )
    upload_roles: str = Field(
        default="clinician,radiographer,radiologist,admin",
        description="Comma list of roles whose users may upload studies straight to the hub "
        "(manifest, tus segments, commit, and the status of their facilities' studies), for one "
        "of their facilities, with no agent in between. Empty: only agents upload.",
    )
    direct_upload_require_totp: bool = Field(
        default=True,
        description="A user uploading straight to the hub must have a TOTP second factor turned "
        "on (such uploads come from outside a facility network); without one the upload routes "
        "answer 403 `totp_required`.",
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed logins for one account from one client address per "
        "`login_lockout_seconds` before that address must wait (other addresses are not "
        "affected: a stranger cannot lock a person out).",
    )
    login_account_max_failures: int = Field(
        default=50,
        ge=0,
        description="Failed logins for one account from all addresses together per "
        "`login_lockout_seconds` (a password spray) before the account takes logins only from "
        "addresses it signed in from in the last `login_known_source_days` (0: no limit).",
    )
    login_known_source_days: float = Field(
        default=30.0,
        ge=0,
        description="How long an address a person signed in from stays known to their account.",
    )
    study_unclaimed_after_hours: float = Field(
        default=24.0,
        gt=0,
        description="A study a facility announced (manifest) but sent no instance of within this "
        "many hours goes to the next facility that sends it, instead of being held for an admin.",
    )
    login_lockout_seconds: float = Field(
        default=900.0,
        ge=0,
        description="The window of the failed-login limits: a locked address or account waits "
        "until its oldest failure in the window is this old.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (e.g. `redis://redis.lan:6379/0`) holding the rate limits, shared "
        "by every hub replica. Empty: limits are counted in this process (embedded default).",
    )
    redis_key_prefix: str = Field(
        default="relaypacs:ratelimit:",
        description="Prefix of the rate-limit keys in Redis, so deployments can share one Redis.",
    )
    login_rate_per_user: int = Field(
        default=20,
        ge=0,
        description="Login attempts per username per `login_rate_window_seconds` (0: no limit).",
    )
    login_rate_per_ip: int = Field(
        default=100,
        ge=0,
        description="Login attempts per client address per `login_rate_window_seconds` "
        "(0: no limit).",
    )
    login_rate_window_seconds: float = Field(
        default=60.0, gt=0, description="Sliding window of the login rate limits, in seconds."
    )
    enroll_rate_per_ip: int = Field(
        default=10,
        ge=0,
        description="Enrollment attempts (`POST /api/v1/devices/enroll`, no credential needed) per "
        "client address per `login_rate_window_seconds` (0: no limit).",
    )
    upload_create_rate: int = Field(
        default=1200,
        ge=0,
        description="tus uploads one caller may create per `upload_create_rate_window_seconds` "
        "(0: no limit).",
    )
    upload_create_rate_window_seconds: float = Field(
        default=60.0, gt=0, description="Sliding window of the upload creation limit, in seconds."
    )
    bootstrap_password: SecretStr | None = Field(
        default=None,
        description="Password `relaypacs-hub create-admin` uses instead of prompting for one.",
    )
    pwa_dir: Path | None = Field(
        default=None,
        description="The built web app (`pwa/dist`, from `make pwa`) the hub serves at "
        "`/dashboard/` (the dashboard) and `/upload/` (the upload app). Empty: the `pwa/dist` "
        "of the source checkout the hub runs from, if built.",
    )
    report_max_bytes: int = Field(
        default=50 * 1024**2,
        description="Largest report (a posted PDF or DICOM object, or one found in an archive).",
    )
    report_poll_enabled: bool = Field(
        default=True,
        description="Watch delivered studies for reports: note each one's Accession Number (HL7 "
        "results are matched on it) and ask the DICOMweb destinations (QIDO-RS) for the reports "
        "they hold; one hub replica at a time does it (a lease in the database).",
    )
    report_poll_seconds: float = Field(
        default=20.0,
        description="How often a delivered routine study's archives are asked for its report "
        "while the study is young (first hour); the interval then grows with the study's age.",
    )
    report_orthanc_changes: bool = Field(
        default=True,
        description="For Orthanc destinations (profile orthanc), also follow Orthanc's /changes "
        "feed: a delivered study that gets a new instance is asked for its report at once.",
    )
    report_poll_stat_seconds: float = Field(
        default=5.0, description="The same interval for a STAT study."
    )
    report_poll_max_seconds: float = Field(
        default=3600.0, description="The longest interval between two polls of one study."
    )
    report_poll_days: float = Field(
        default=14.0, description="Stop asking for a study's report this long after delivery."
    )
    hl7_port: int | None = Field(
        default=None,
        description="Port of the HL7 v2 MLLP listener that takes ORU^R01 report results "
        "(matched to studies by Accession Number). Empty: no listener.",
    )
    hl7_host: str = Field(default="127.0.0.1", description="Address the HL7 listener binds.")
    vapid_private_key_file: Path | None = Field(
        default=None,
        description="PEM private key (P-256) the hub signs Web Push requests with (VAPID). "
        "Empty: one made at first start in `data_dir` (vapid-private.pem).",
    )
    vapid_subject: str = Field(
        default="mailto:admin@relaypacs.invalid",
        description="VAPID `sub` claim: a mailto: or https: contact for the push services.",
    )
    anonymous_agents: bool = Field(
        default=False,
        description="Development and tests only: accept agent calls (uploads, manifests, the "
        "login verifiers) with no credential at all while no `agent_token` is set. Off: agents "
        "enroll (`relaypacs-hub enrollment-code`, `relaypacs-agent enroll`). Production "
        "refuses it.",
    )
    http_max_connections: int = Field(
        default=1000,
        ge=16,
        description="Open HTTP connections at most (lowered to what the process' file limit "
        "allows). Past it a new connection displaces the oldest idle one; 503 when all are busy.",
    )
    http_header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A request head (request line and headers) must arrive within this long of "
        "the connection or of its first byte; else 408 and the connection closes.",
    )
    http_body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A request body that sends nothing for this long ends its connection (tus "
        "uploads resume from the last offset).",
    )
    tcp_rto_max_ms: int = Field(
        default=1000,
        ge=0,
        le=120_000,
        description="Longest wait before TCP sends a lost segment of an answer again, on the "
        "connections agents make (Linux 6.15+; the kernel's backoff grows to 120 s and stalls a "
        "lossy link). 0: the kernel's default. Ignored by older kernels.",
    )
    tcp_rto_min_ms: int = Field(
        default=50,
        ge=0,
        le=1000,
        description="Floor of TCP's retransmission timeout in ms on accepted connections "
        "(Linux 6.15+; the kernel's is 200 ms); the timeout still follows the measured round "
        "trip. 0: the kernel's default.",
    )
    request_max_bytes: int = Field(
        default=1024**2,
        ge=1024,
        description="Largest body of a JSON request (login, users, rules...), in bytes; 413 above.",
    )
    manifest_max_bytes: int = Field(
        default=32 * 1024**2,
        ge=1024,
        description="Largest body of a study manifest or commit, in bytes; 413 above.",
    )
    log_json: bool = Field(default=False, description="Log JSON lines instead of console text.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> HubSettings:
        if self.environment == "production" and self.anonymous_agents:
            raise ValueError("RELAYPACS_HUB_ANONYMOUS_AGENTS is for development only")
        if self.environment != "production":
            return self
        if self.allow_agent_token:
            token = self.agent_token.get_secret_value() if self.agent_token else ""
            if len(token) < 32:
                raise ValueError(
                    "RELAYPACS_HUB_AGENT_TOKEN must be set to at least 32 characters in production "
                    "(or RELAYPACS_HUB_ALLOW_AGENT_TOKEN=false once agents are enrolled)"
                )
        for name in ("agent_token", "admin_token", "metrics_token", "report_webhook_token"):
            secret = getattr(self, name)
            if secret is None or (name == "agent_token" and not self.allow_agent_token):
                continue
            value = secret.get_secret_value()
            if "change-me" in value.lower():
                continue  # the example file's placeholder: refused in its own words below
            bits = secret_bits(value)
            if len(value) < 32 or bits < MIN_SECRET_BITS:
                raise ValueError(
                    f"RELAYPACS_HUB_{name.upper()} is guessable ({len(value)} characters, about "
                    f"{bits:.0f} bits by its characters; {MIN_SECRET_BITS} needed): use a random "
                    "value of at least 32 characters, e.g. `openssl rand -hex 32`"
                )
        return self

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> HubSettings:
        """The example env files say CHANGE-ME: production refuses any setting still saying so."""
        if self.environment != "production":
            return self
        for name, value in self:
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if isinstance(text, str) and "change-me" in text.lower():
                raise ValueError(
                    f"RELAYPACS_HUB_{name.upper()} still holds the CHANGE-ME placeholder of the "
                    "example env file: set a real value (e.g. `openssl rand -hex 32`)"
                )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> HubSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError(
                "RELAYPACS_HUB_TLS_CERTFILE and RELAYPACS_HUB_TLS_KEYFILE are set together or not "
                "at all"
            )
        self.check_listen(self.host)
        return self

    @property
    def totp_required_roles(self) -> frozenset[str]:
        return frozenset(r.strip() for r in self.require_totp_roles.split(",") if r.strip())

    @property
    def upload_role_set(self) -> frozenset[str]:
        return frozenset(r.strip() for r in self.upload_roles.split(",") if r.strip())

    @property
    def tls_enabled(self) -> bool:
        return self.tls_certfile is not None and self.tls_keyfile is not None

    def check_listen(self, host: str) -> None:
        """Production serves plain HTTP only on the loopback, unless a proxy is declared."""
        if (
            self.environment == "production"
            and not self.tls_enabled
            and not self.allow_plain_http
            and not is_loopback_host(host)
        ):
            raise ValueError(
                f"refusing to listen on {host} without TLS in production: set "
                "RELAYPACS_HUB_TLS_CERTFILE and RELAYPACS_HUB_TLS_KEYFILE, or "
                "RELAYPACS_HUB_ALLOW_PLAIN_HTTP=true behind a TLS-terminating proxy"
            )

    @model_validator(mode="after")
    def _check_s3(self) -> HubSettings:
        if self.object_store != "s3":
            return self
        if not self.s3_endpoint or "/" in self.s3_endpoint:
            raise ValueError(
                "RELAYPACS_HUB_S3_ENDPOINT must be host:port when the object store is s3 "
                "(TLS is RELAYPACS_HUB_S3_SECURE)"
            )
        if not self.s3_bucket:
            raise ValueError("RELAYPACS_HUB_S3_BUCKET must be set when the object store is s3")
        if self.environment == "production":
            secret = self.s3_secret_key.get_secret_value()
            if not self.s3_access_key or not secret or secret in _WELL_KNOWN_S3_SECRETS:
                raise ValueError(
                    "RELAYPACS_HUB_S3_ACCESS_KEY and RELAYPACS_HUB_S3_SECRET_KEY must be set, "
                    "and not to a default, in production"
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
