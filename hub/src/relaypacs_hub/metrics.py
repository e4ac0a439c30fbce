"""Prometheus metrics of the hub and its forwarding workers (names ``relaypacs_*``, base units).

Two kinds:

* **Event counters and histograms** (studies committed, instances and bytes received, tus
  uploads, forwarding outcomes, time to PACS, HTTP answers, dependency errors) live in this
  process: each hub replica and each worker counts what it did, so ``sum()`` across the scraped
  targets is the whole. A restart resets them, which ``rate()`` and ``increase()`` handle.
* **State gauges** (the forwarding queue by state, the age of the oldest due job, agents'
  heartbeats, the TLS certificate's expiry) are computed from the database at each scrape:
  every replica answers the same value, so take ``max()`` across replicas.

Labels are codes and names an admin chose (facility, destination, agent name, service level,
outcome, HTTP route template): never a UID, a file name or anything from a patient's header.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relaypacs_hub.db.models import AgentHeartbeat, ForwardJob, JobState, utcnow

log = structlog.get_logger("relaypacs.hub.metrics")

__all__ = ["CONTENT_TYPE_LATEST", "CountRequests", "render"]

UNKNOWN = "unknown"

STUDIES_COMMITTED = Counter(
    "relaypacs_studies_committed",
    "Studies committed for the first time (a follow-up commit of the same study is not counted).",
    ["facility", "service_level"],
)
STUDY_COMMITS = Counter(
    "relaypacs_study_commits",
    "Study commits, follow-ups (a late series) included.",
    ["facility", "service_level"],
)
INSTANCES_RECEIVED = Counter(
    "relaypacs_instances_received",
    "DICOM instances the hub stored (new bytes; a duplicate of held bytes is not counted).",
    ["facility"],
)
BYTES_RECEIVED = Counter(
    "relaypacs_received_bytes",
    "Bytes of the DICOM instances the hub stored.",
    ["facility"],
)
TUS_CREATED = Counter("relaypacs_tus_uploads_created", "tus uploads created.")
TUS_FINISHED = Counter(
    "relaypacs_tus_uploads_finished", "tus uploads whose last byte arrived (upload complete)."
)
TUS_FAILED = Counter(
    "relaypacs_tus_uploads_failed",
    "tus requests the hub refused or failed, by HTTP status.",
    ["status"],
)
FORWARD_FINISHED = Counter(
    "relaypacs_forward_jobs_finished",
    "Forwarding attempts that ended: delivered (the archive confirmed the study), retry (failed, "
    "tried again later) or dead (failed for good; needs a person).",
    ["destination", "outcome"],
)
TIME_TO_PACS = Histogram(
    "relaypacs_time_to_pacs_seconds",
    "From the agent's receipt of a study to the archive's confirmation of all of it.",
    ["service_level", "facility"],
    buckets=(30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
HTTP_REQUESTS = Counter(
    "relaypacs_http_requests",
    "HTTP requests the hub answered, by route template, method and status class.",
    ["route", "method", "status"],
)
DEPENDENCY_ERRORS = Counter(
    "relaypacs_dependency_errors",
    "Errors talking to a dependency: database, object_store or redis.",
    ["dependency"],
)
for _dep in ("database", "object_store", "redis"):
    DEPENDENCY_ERRORS.labels(_dep)


def label(value: str | None) -> str:
    return value[:64] if value else UNKNOWN


def committed(facility: str | None, service_level: str, *, first: bool) -> None:
    STUDY_COMMITS.labels(label(facility), service_level).inc()
    if first:
        STUDIES_COMMITTED.labels(label(facility), service_level).inc()


def instance_stored(facility: str | None, size: int) -> None:
    INSTANCES_RECEIVED.labels(label(facility)).inc()
    BYTES_RECEIVED.labels(label(facility)).inc(size)


def forward_outcome(destination: str, outcome: str) -> None:
    FORWARD_FINISHED.labels(destination, outcome).inc()


def delivered(destination: str, service_level: str, facility: str | None, seconds: float) -> None:
    FORWARD_FINISHED.labels(destination, "delivered").inc()
    TIME_TO_PACS.labels(service_level, label(facility)).observe(seconds)


def dependency_error(dependency: str) -> None:
    DEPENDENCY_ERRORS.labels(dependency).inc()


def status_class(code: int) -> str:
    return f"{code // 100}xx"


# -- state computed at scrape --------------------------------------------------------------------


class _Snapshot(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self.families


def certificate_expiry(path: Path) -> float | None:
    """The notAfter of the first certificate in a PEM file, as a Unix time; None if unreadable."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.timestamp()


def _ts(value: datetime | None) -> float | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC).timestamp() if value.tzinfo is None else value.timestamp()


async def state_families(
    sessionmaker: async_sessionmaker[AsyncSession],
    destinations: Iterable[str],
    certificates: dict[str, Path],
) -> list[GaugeMetricFamily]:
    now = utcnow()
    jobs = GaugeMetricFamily(
        "relaypacs_forward_jobs",
        "Forwarding jobs by destination and state (pending, running, held, done, dead), from the "
        "database: the same on every replica.",
        labels=["destination", "state"],
    )
    oldest = GaugeMetricFamily(
        "relaypacs_queue_oldest_pending_age_seconds",
        "Age of the oldest job due now (pending, next attempt reached), per destination; 0 when "
        "none is due.",
        labels=["destination"],
    )
    counts: dict[tuple[str, str], int] = {}
    due_since: dict[str, datetime] = {}
    async with sessionmaker() as session:
        for dest, state, n in await session.execute(
            select(ForwardJob.destination, ForwardJob.state, func.count()).group_by(
                ForwardJob.destination, ForwardJob.state
            )
        ):
            counts[(dest, state)] = int(n)
        for dest, created in await session.execute(
            select(ForwardJob.destination, func.min(ForwardJob.created_at))
            .where(ForwardJob.state == JobState.PENDING)
            .where(ForwardJob.next_attempt_at <= now)
            .group_by(ForwardJob.destination)
        ):
            due_since[dest] = created
        beats = list(await session.scalars(select(AgentHeartbeat)))
    names = sorted(set(destinations) | {d for d, _ in counts})
    for dest in names:
        for state in tuple(JobState):
            jobs.add_metric([dest, state], counts.get((dest, state), 0))
        since = due_since.get(dest)
        oldest.add_metric([dest], max((now - since).total_seconds(), 0.0) if since else 0.0)
    families = [jobs, oldest, *agent_families(beats)]
    cert = GaugeMetricFamily(
        "relaypacs_tls_certificate_expiry_timestamp_seconds",
        "When the certificate the hub serves stops being valid (Unix time).",
        labels=["certificate"],
    )
    for name, path in certificates.items():
        expiry = certificate_expiry(path)
        if expiry is not None:
            cert.add_metric([name], expiry)
    families.append(cert)
    return families


def agent_families(beats: list[AgentHeartbeat]) -> list[GaugeMetricFamily]:
    labels = ["agent", "facility"]

    def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels + (extra or []))

    info = gauge("relaypacs_agent_info", "One per agent that ever reported; 1.", ["version"])
    seen = gauge(
        "relaypacs_agent_last_heartbeat_timestamp_seconds", "When the agent last reported."
    )
    contact = gauge(
        "relaypacs_agent_last_hub_contact_timestamp_seconds",
        "When the agent last had an answer from the hub, as it reported.",
    )
    studies = gauge("relaypacs_agent_backlog_studies", "Studies the agent has not delivered.")
    size = gauge("relaypacs_agent_backlog_bytes", "Bytes of the studies not delivered.")
    waiting = gauge(
        "relaypacs_agent_oldest_waiting_seconds",
        "Age of the agent's oldest study not yet delivered, when it reported (0: none).",
    )
    free = gauge("relaypacs_agent_disk_free_bytes", "Free bytes on the agent's spool disk.")
    reserve = gauge(
        "relaypacs_agent_disk_reserve_bytes",
        "The agent's disk reserve: below it the agent refuses new studies.",
    )
    quarantine = gauge(
        "relaypacs_agent_quarantined_files",
        "Files the agent holds in quarantine (not yet resolved), by reason code.",
        ["reason"],
    )
    taken: dict[tuple[str, str], int] = {}
    for beat in sorted(beats, key=lambda b: b.agent_key):
        facility = label(beat.facility)
        name = beat.name[:64] or UNKNOWN
        key = (name, facility)
        taken[key] = taken.get(key, 0) + 1
        if taken[key] > 1:  # two agents of a facility with one name: keep both series apart
            name = f"{name}#{taken[key]}"
        values = [name, facility]
        info.add_metric([*values, beat.version], 1)
        seen.add_metric(values, _ts(beat.received_at) or 0.0)
        contact_at = _ts(beat.last_hub_contact_at)
        if contact_at is not None:
            contact.add_metric(values, contact_at)
        studies.add_metric(values, beat.backlog_studies)
        size.add_metric(values, beat.backlog_bytes)
        waiting.add_metric(values, beat.oldest_waiting_seconds or 0.0)
        if beat.disk_free_bytes is not None:
            free.add_metric(values, beat.disk_free_bytes)
        if beat.disk_reserve_bytes is not None:
            reserve.add_metric(values, beat.disk_reserve_bytes)
        for reason, n in sorted(json.loads(beat.quarantine_json or "{}").items()):
            quarantine.add_metric([*values, reason], n)
    return [info, seen, contact, studies, size, waiting, free, reserve, quarantine]


async def render(
    sessionmaker: async_sessionmaker[AsyncSession] | None,
    destinations: Iterable[str] = (),
    certificates: dict[str, Path] | None = None,
) -> bytes:
    """This process's counters, then (with a database) the state computed now."""
    text = generate_latest(REGISTRY)
    if sessionmaker is None:
        return text
    started = time.monotonic()
    try:
        families = await state_families(sessionmaker, destinations, certificates or {})
    except Exception as exc:
        dependency_error("database")
        log.warning("metrics_state_failed", error_type=type(exc).__name__)
        families = []
    scrape = GaugeMetricFamily(
        "relaypacs_metrics_state_ok",
        "1 when the state gauges could be read from the database at this scrape, else 0.",
        value=1.0 if families else 0.0,
    )
    took = GaugeMetricFamily(
        "relaypacs_metrics_state_seconds",
        "Time spent reading the state gauges from the database at this scrape.",
        value=time.monotonic() - started,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot([*families, scrape, took]))
    return text + generate_latest(registry)


class CountRequests:
    """ASGI middleware: count each HTTP answer by route template (never the URL: it holds UIDs),
    method and status class; tus refusals also by their exact status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = 500

        async def _send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            HTTP_REQUESTS.labels(route, method, status_class(answered)).inc()
            if route.startswith("/api/v1/uploads") and method != "OPTIONS" and answered >= 400:
                TUS_FAILED.labels(str(answered)).inc()
