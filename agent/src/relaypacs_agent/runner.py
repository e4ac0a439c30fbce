"""The running agent: watcher threads, the C-STORE SCP, the conformance checker and the uplink,
over one store. Every thread's state is durable in the store, so a hard kill loses nothing."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Callable
from types import FrameType

import structlog

from relaypacs_agent.config import AgentSettings
from relaypacs_agent.ingest.archive import Importer
from relaypacs_agent.ingest.conformance import ConformanceChecker, find_dciodvfy
from relaypacs_agent.ingest.dimse import StoreSCP
from relaypacs_agent.ingest.files import remove_orphans
from relaypacs_agent.ingest.pipeline import Ingestor, Source
from relaypacs_agent.ingest.watcher import InboxWatcher
from relaypacs_agent.report_store import PacsAddress, ReportStorer
from relaypacs_agent.reports import ReportFollower, ReportInbox
from relaypacs_agent.store.db import Store
from relaypacs_agent.uplink.client import HubClient
from relaypacs_agent.uplink.credential import credential_path
from relaypacs_agent.uplink.heartbeat import HeartbeatSender
from relaypacs_agent.uplink.transfer import TransferSender
from relaypacs_agent.web.server import WebServer
from relaypacs_shared.archives import ArchiveLimits
from relaypacs_shared.netopts import supported_options
from relaypacs_shared.private import private_files, private_umask
from relaypacs_shared.sdnotify import Notifier

log = structlog.get_logger("relaypacs.agent")


def build_ingestor(settings: AgentSettings, store: Store) -> Ingestor:
    return Ingestor(
        store,
        spool_dir=settings.spool_dir,
        quarantine_dir=settings.quarantine_dir,
        max_instance_bytes=settings.max_instance_bytes,
        service_level=settings.service_level,
        min_free_bytes=settings.min_free_bytes,
        max_sequence_depth=settings.max_sequence_depth,
    )


def build_importer(settings: AgentSettings, ingestor: Ingestor) -> Importer:
    return Importer(
        ingestor,
        incoming_dir=settings.incoming_dir,
        limits=ArchiveLimits(
            max_total_bytes=settings.max_archive_bytes,
            max_entries=settings.max_archive_entries,
            max_ratio=settings.max_compression_ratio,
            max_entry_bytes=settings.max_instance_bytes,
        ),
        workers=settings.ingest_workers,
    )


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        # Private whatever the umask: the catalogue holds password hashes and TOTP secrets, the
        # spool and quarantine hold images; an earlier looser start's folders are tightened.
        private_umask()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        private_files(
            [settings.data_dir, settings.db_path, settings.spool_dir, settings.quarantine_dir]
        )
        self.store = Store(settings.db_path)
        self.ingestor = build_ingestor(settings, self.store)
        self.importer = build_importer(settings, self.ingestor)
        self.watchers = [
            InboxWatcher(
                folder.path,
                self.ingestor,
                settle_seconds=(
                    folder.settle_seconds
                    if folder.settle_seconds is not None
                    else settings.settle_seconds
                ),
                scan_interval=settings.scan_interval_seconds,
                source=Source(
                    kind="folder",
                    name=folder.label,
                    service_level=folder.service_level,
                    quiet_period=folder.quiet_period_seconds,
                    metadata=folder.metadata,
                    keep_original=folder.mode == "copy",
                    folder_key=str(folder.path) if folder.mode == "copy" else None,
                ),
                importer=self.importer,
                workers=settings.ingest_workers,
                create=folder.name == "inbox",
            )
            for folder in settings.folders
        ]
        self.scp: StoreSCP | None = None
        if settings.dimse_port:
            self.scp = StoreSCP(
                self.ingestor,
                host=settings.dimse_host,
                port=settings.dimse_port,
                ae_title=settings.dimse_ae_title,
                allowed_calling_aets=settings.allowed_calling_aets,
                service_level=settings.dimse_service_level,
                release_grace=settings.dimse_release_grace_seconds,
                max_associations=settings.dimse_max_associations,
            )
        binary = find_dciodvfy() if settings.conformance_check else None
        self.checker = ConformanceChecker(self.store, binary) if binary else None
        # --- uplink: the one place where the sender is built (the transfer work plugs in here).
        settings.check_hub_url()  # no plain HTTP off the loopback unless allowed
        self.client = HubClient(
            settings.hub_url,
            token=settings.hub_token.get_secret_value() if settings.hub_token else None,
            timeout=settings.request_timeout_seconds,
            ca_file=settings.hub_ca_file,
            credential_file=credential_path(settings.data_dir),
            socket_options=supported_options(settings.tcp_rto_max_ms, settings.tcp_rto_min_ms),
        )
        # The uplink: manifest, then resumable tus segments (relaypacs_agent.uplink.transfer).
        self.sender = TransferSender(
            self.store,
            self.client,
            self.ingestor,
            spool_dir=settings.spool_dir,
            quiet_period=settings.quiet_period_seconds,
            retry_max=settings.retry_max_seconds,
            held_retry=settings.held_retry_seconds,
            status_poll=settings.status_poll_seconds,
            segment_min=settings.segment_min_bytes,
            segment_max=settings.segment_max_bytes,
            bandwidth_limit_kbps=settings.bandwidth_limit_kbps,
            routine_window=settings.routine_window,
            streams=settings.parallel_streams,
            part_copies=settings.part_copies,
        )
        # --- end of uplink construction.
        self.heartbeat = (
            HeartbeatSender(
                self.client,
                settings.db_path,
                settings.spool_dir,
                settings.min_free_bytes,
                every=settings.heartbeat_seconds,
                name=settings.agent_name,
            )
            if settings.heartbeat_seconds > 0
            else None
        )
        self.reports = ReportInbox(self.store, settings.data_dir / "reports")
        self.follower = (
            ReportFollower(
                self.reports,
                self.client,
                wait=settings.report_feed_wait_seconds,
                retry_max=settings.retry_max_seconds,
            )
            if settings.follow_reports
            else None
        )
        self.report_storer = (
            ReportStorer(
                self.store,
                settings.data_dir / "reports",
                PacsAddress.parse(settings.report_store_pacs),
                settings.dimse_ae_title,
            )
            if settings.follow_reports and settings.report_store_pacs
            else None
        )
        self.web: WebServer | None = None
        if settings.web_port:
            self.web = WebServer(
                settings,
                self.store,
                self.ingestor,
                wake_sender=self.sender.wake,
                reports=self.reports,
            )
        self.stop = threading.Event()

    def _prepare(self) -> None:
        """Recover from whatever a crash left: staging copies, half-received files, lost rows."""
        removed = self.ingestor.cleanup_staging() + remove_orphans(self.settings.incoming_dir)
        if removed:
            log.info("staging_cleaned", entries=removed)
        recovered = self.ingestor.reconcile_quarantine()
        if recovered:
            log.info("quarantine_reconciled", files=recovered)
        # C-STORE datasets stream to pynetdicom's temporary files: keep them on the spool's
        # disk (a Raspberry Pi's /tmp may be RAM), named per process so a crash is cleaned up.
        own_tmp = self.settings.incoming_dir / f"{os.getpid()}-dimse"
        own_tmp.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(own_tmp)

    def run(self) -> None:
        """Run until SIGINT/SIGTERM. All state is durable, so a hard kill loses nothing either."""
        self._prepare()

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("agent_stopping", signal=signal.Signals(signum).name)
            self.stop.set()
            self.sender.wake.set()

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        targets: list[tuple[str, Callable[[threading.Event], None]]] = [
            (f"watcher-{w.source.name or i}", w.run) for i, w in enumerate(self.watchers)
        ]
        targets.append(("sender", self.sender.run))
        if self.follower is not None:
            targets.append(("reports", self.follower.run))
        if self.report_storer is not None:
            targets.append(("report-store", self.report_storer.run))
        if self.heartbeat is not None:
            targets.append(("heartbeat", self.heartbeat.run))
        if self.checker is not None:
            targets.append(("conformance", self.checker.run))
        threads = [
            threading.Thread(target=fn, args=(self.stop,), name=name, daemon=True)
            for name, fn in targets
        ]
        for t in threads:
            t.start()
        if self.scp is not None:
            self.scp.start()
        if self.web is not None:
            self.web.start(self.stop)
        log.info(
            "agent_started",
            folders=[str(w.inbox) for w in self.watchers],
            dimse_port=self.settings.dimse_port or None,
            web_port=self.settings.web_port or None,
            hub=self.settings.hub_url,
            data_dir=str(self.settings.data_dir),
        )
        notifier = Notifier()
        notifier.ready(f"relaying to {self.settings.hub_url}")
        dead: list[str] = []
        while not self.stop.wait(notifier.ping_interval()):
            # systemd's watchdog (Type=notify, WatchdogSec=) restarts an agent whose pings stop:
            # ping only while every worker thread is alive, so a crashed sender is restarted.
            watched = threads + (self.web.threads if self.web is not None else [])
            now_dead = [t.name for t in watched if not t.is_alive()]
            if now_dead != dead:
                dead = now_dead
                log.error("agent_thread_died", threads=dead, watchdog=notifier.enabled)
                notifier.notify(STATUS=f"unhealthy: {', '.join(dead)} stopped")
            if not dead:
                notifier.watchdog()
        notifier.stopping("stopping")
        if self.scp is not None:
            self.scp.stop()
        if self.web is not None:
            self.web.stop()
        for t in threads:
            t.join(timeout=15)
        self.client.close()
        self.store.close()
        log.info("agent_stopped")


def folder_source(settings: AgentSettings, name: str) -> Source:
    """The Source of a watched folder by name (for imports that should carry its defaults)."""
    for folder in settings.folders:
        if folder.label == name:
            return Source(
                kind="import",
                name=folder.label,
                service_level=folder.service_level,
                quiet_period=folder.quiet_period_seconds,
                metadata=folder.metadata,
            )
    raise KeyError(name)
