"""Hub database models (SQLAlchemy 2, typed). Timestamps are naive UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobState(StrEnum):
    """Where a forwarding job stands (``forward_jobs.state``). pending: waiting for a worker (or
    its next attempt); running: leased by a worker; held: routed but kept back by a rule until an
    admin releases it; done: the destination confirmed every instance; dead: out of attempts."""

    PENDING = "pending"
    RUNNING = "running"
    HELD = "held"
    DONE = "done"
    DEAD = "dead"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def aware_utc(value: datetime | None) -> datetime | None:
    """A stored naive-UTC timestamp as an aware one, so an API answer carries its offset (a
    browser reads an ISO time without one as local time)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="receiving")  # receiving | committed
    service_level: Mapped[str] = mapped_column(String(16), default="routine")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    commits: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    committed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Written by the sender for the radiologist (clinical data: shown to readers, never logged).
    clinical_history: Mapped[str | None] = mapped_column(Text, nullable=True)
    referring_clinician: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # From the instances' headers as they arrive (clinical data: shown, never logged).
    # Modalities of the study, backslash-separated as in (0008,0061), e.g. "CT\\SR".
    modalities: Mapped[str | None] = mapped_column(String(64), nullable=True)
    study_date: Mapped[str | None] = mapped_column(String(8), nullable=True)  # YYYYMMDD
    study_description: Mapped[str | None] = mapped_column(String(64), nullable=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Instance(Base):
    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        String(64), ForeignKey("studies.study_instance_uid"), index=True
    )
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Set when a commit's manifest names the instance: only committed instances are forwarded.
    committed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ForwardJob(Base):
    """One study to one destination. Picked with SKIP LOCKED on PostgreSQL."""

    __tablename__ = "forward_jobs"
    __table_args__ = (
        UniqueConstraint("study_instance_uid", "destination"),
        Index("ix_forward_jobs_due", "state", "priority", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(
        String(64), ForeignKey("studies.study_instance_uid")
    )
    destination: Mapped[str] = mapped_column(String(64))
    # pending | running | done | dead
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Added with routing (0003): which worker holds the lease, which rule holds the job
    # (state "held"), and the time from receipt to the archive's confirmation.
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    held_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    time_to_pacs_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class InstanceDelivery(Base):
    """An instance the destination accepted (``confirmed_at`` once the archive was asked)."""

    __tablename__ = "instance_deliveries"

    destination: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(
        String(64), ForeignKey("instances.sop_instance_uid"), primary_key=True
    )
    delivered_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ManifestEntry(Base):
    """One instance the agent declared for a study (before or without its bytes)."""

    __tablename__ = "manifest_entries"

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    declared_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Upload(Base):
    """A tus 1.0 upload (one segment, a partial of a concatenation, or a final concatenation)."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    length: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: deferred
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    storage_key: Mapped[str] = mapped_column(String(255))
    concat: Mapped[str] = mapped_column(String(16), default="none")  # none | partial | final
    parts_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # Who created it ("device:<id>", "user:<name>", ...): nobody else may see it (migration 0010).
    owner: Mapped[str | None] = mapped_column(String(160), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | complete | processed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# -- routing and delivery (migration 0003) ---------------------------------------------------


class RoutingRuleSet(Base):
    """One version of the routing rules; the highest version is in force on every replica."""

    __tablename__ = "routing_rule_sets"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(255))  # "api" or "file:<path>"
    sha256: Mapped[str] = mapped_column(String(64))
    body_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class StudyRoute(Base):
    """How a study was routed at its latest commit, where it came from, and its retention."""

    __tablename__ = "study_routes"

    study_instance_uid: Mapped[str] = mapped_column(
        String(64), ForeignKey("studies.study_instance_uid"), primary_key=True
    )
    facility: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # When the agent took the study in (time to PACS starts there); else the hub's first receipt.
    agent_received_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    rule_set_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    matched_rules_json: Mapped[str] = mapped_column(Text, default="[]")
    destinations_json: Mapped[str] = mapped_column(Text, default="[]")
    unrouted: Mapped[bool] = mapped_column(Boolean, default=False)
    routed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# -- audit (migration 0004) -------------------------------------------------------------------


class AuditLogEntry(Base):
    """One hash-chained audit record (``relaypacs_shared.audit``); rows are only ever appended."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(32))  # UTC ISO 8601, exactly as hashed
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(255))
    details_json: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


# -- users and refresh tokens (migration 0005) ------------------------------------------------


class User(Base):
    """A person at the hub: a role, the facilities they belong to, an argon2 password hash."""

    __tablename__ = "users"
    # Names are unique whatever their case (migration 0012).
    __table_args__ = (Index("ix_users_username_lower", func.lower(text("username")), unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # clinician | radiographer | radiologist | admin
    facilities_json: Mapped[str] = mapped_column(Text, default="[]")
    password_hash: Mapped[str] = mapped_column(String(255))
    # Set at enrollment, trusted only once confirmed with a code (totp_enabled).
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The RFC 6238 time step of the last code accepted: a code works once.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    recovery_codes_json: Mapped[str] = mapped_column(Text, default="[]")  # sha256 of unused codes
    # Set while a password spray (failures from many addresses) keeps this account to the
    # addresses it signed in from before (LoginSource); shown to admins, cleared by a reset.
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LoginSource(Base):
    """An address a person signed in from (its sha256), and when last (migration 0013)."""

    __tablename__ = "login_sources"

    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id"), primary_key=True)
    source_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_success_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RefreshToken(Base):
    """One refresh token (only its sha256). A rotation keeps the family; reuse revokes it all."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# -- agent enrollment: devices and their facility (migration 0006) ----------------------------


class EnrollmentCode(Base):
    """A one-time code an admin issued for a facility (only its sha256); used once to enroll."""

    __tablename__ = "enrollment_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    facility: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Device(Base):
    """An enrolled agent: its facility and the sha256 of its current secret."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    facility: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class StudyFacility(Base):
    """The facility a study belongs to, recorded at its first manifest or instance from a device."""

    __tablename__ = "study_facilities"

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    facility: Mapped[str] = mapped_column(String(64), index=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class StudyClaim(Base):
    """Another facility sending a study that belongs to a facility already (a patient transfer,
    or two studies sharing one UID): held until an admin accepts it for that facility too, or
    refuses it (migration 0014)."""

    __tablename__ = "study_claims"

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    facility: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(
        String(16), default="held", index=True
    )  # held|accepted|refused
    device: Mapped[str] = mapped_column(String(128), default="")  # the last device that sent it
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")  # the admin's words, shown to the agent


# -- reports (migration 0010) -----------------------------------------------------------------


class Report(Base):
    """A radiology report of a study: found in an archive, received by HL7 or posted through the
    API. ``text`` is readable text (SR rendered, CDA sections, the posted text); ``content``
    the PDF or the posted DICOM object."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    facility: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    source: Mapped[str] = mapped_column(String(96))  # archive:<dest> | hl7 | api:<username>
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # text | sr | pdf | cda
    status: Mapped[str] = mapped_column(String(16))  # preliminary | final | amended
    title: Mapped[str] = mapped_column(String(200), default="Report")
    text: Mapped[str] = mapped_column(Text, default="")
    content: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    predecessors_json: Mapped[str] = mapped_column(Text, default="[]")
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ReportEvent(Base):
    """The per-facility feed agents follow with a cursor (``seq``)."""

    __tablename__ = "report_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    facility: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    report_id: Mapped[int] = mapped_column(Integer, ForeignKey("reports.id"))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class StudyReport(Base):
    """A delivered study's report status, its times and when the archives are asked next."""

    __tablename__ = "study_reports"
    __table_args__ = (Index("ix_study_reports_due", "next_poll_at"),)

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    facility: Mapped[str | None] = mapped_column(String(64), nullable=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    stat: Mapped[bool] = mapped_column(Boolean, default=False)
    # none | preliminary | final | amended
    report_status: Mapped[str] = mapped_column(String(16), default="none")
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    preliminary_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    final_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    amended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    time_to_report_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    next_poll_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    last_polled_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ReportSkip(Base):
    """An archive object of a delivered study that is not a report (dose SR, key objects, a
    malformed SR), with the reason: looked at once, not fetched again."""

    __tablename__ = "report_skips"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(255))
    seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ServiceLease(Base):
    """A lease one hub replica holds to run a singleton loop (the report poller)."""

    __tablename__ = "service_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(96), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class PushSubscription(Base):
    """A browser's Web Push subscription, made on an agent's LAN app and relayed to the hub."""

    __tablename__ = "push_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(1024), unique=True)
    p256dh: Mapped[str] = mapped_column(String(255))
    auth: Mapped[str] = mapped_column(String(64))
    facility: Mapped[str] = mapped_column(String(64), index=True)
    username: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


# -- agent heartbeats (migration 0009) --------------------------------------------------------


class AgentHeartbeat(Base):
    """The latest heartbeat of one agent (agents sit behind NAT: they report, the hub exports
    it). ``agent_key`` is the device id of an enrolled agent, else ``unenrolled:<name>``."""

    __tablename__ = "agent_heartbeats"

    agent_key: Mapped[str] = mapped_column(String(160), primary_key=True)
    device_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    facility: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    backlog_studies: Mapped[int] = mapped_column(Integer, default=0)
    backlog_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    oldest_waiting_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_free_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    disk_reserve_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quarantine_json: Mapped[str] = mapped_column(Text, default="{}")  # reason -> open count
    last_hub_contact_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
