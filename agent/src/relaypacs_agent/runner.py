"""The running agent: a watcher thread and a sender thread over one store."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import structlog

from relaypacs_agent.config import AgentSettings
from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.ingest.watcher import InboxWatcher
from relaypacs_agent.store.db import Store
from relaypacs_agent.uplink.client import HubClient
from relaypacs_agent.uplink.transfer import TransferSender

log = structlog.get_logger("relaypacs.agent")


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.db_path)
        self.ingestor = Ingestor(
            self.store,
            spool_dir=settings.spool_dir,
            quarantine_dir=settings.quarantine_dir,
            max_instance_bytes=settings.max_instance_bytes,
            service_level=settings.service_level,
        )
        self.client = HubClient(
            settings.hub_url,
            token=settings.hub_token.get_secret_value() if settings.hub_token else None,
            timeout=settings.request_timeout_seconds,
        )
        self.watcher = InboxWatcher(
            settings.resolved_inbox,
            self.ingestor,
            settle_seconds=settings.settle_seconds,
            scan_interval=settings.scan_interval_seconds,
        )
        # The uplink: manifest, then resumable tus segments (relaypacs_agent.uplink.transfer).
        self.sender = TransferSender(
            self.store,
            self.client,
            self.ingestor,
            spool_dir=settings.spool_dir,
            quiet_period=settings.quiet_period_seconds,
            retry_max=settings.retry_max_seconds,
            status_poll=settings.status_poll_seconds,
            segment_min=settings.segment_min_bytes,
            segment_max=settings.segment_max_bytes,
            bandwidth_limit_kbps=settings.bandwidth_limit_kbps,
            routine_window=settings.routine_window,
        )
        self.stop = threading.Event()

    def run(self) -> None:
        """Run until SIGINT/SIGTERM. All state is durable, so a hard kill loses nothing either."""
        recovered = self.ingestor.reconcile_quarantine()
        if recovered:
            log.info("quarantine_reconciled", files=recovered)

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("agent_stopping", signal=signal.Signals(signum).name)
            self.stop.set()
            self.sender.wake.set()

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        threads = [
            threading.Thread(
                target=self.watcher.run, args=(self.stop,), name="watcher", daemon=True
            ),
            threading.Thread(target=self.sender.run, args=(self.stop,), name="sender", daemon=True),
        ]
        for t in threads:
            t.start()
        log.info(
            "agent_started",
            inbox=str(self.settings.resolved_inbox),
            hub=self.settings.hub_url,
            data_dir=str(self.settings.data_dir),
        )
        while not self.stop.wait(0.5):
            pass
        for t in threads:
            t.join(timeout=15)
        self.client.close()
        self.store.close()
        log.info("agent_stopped")
