"""Relay settled studies to the hub: upload what the hub lacks, then commit the manifest.

An instance is marked uploaded only when the hub has answered that it holds it with the declared
hash; a study is committed only when the hub accepts the full manifest. Whatever fails is tried
again later with a capped, jittered backoff, so a link that comes back is used within seconds.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import structlog

from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.store.db import Store
from relaypacs_agent.uplink.client import HubClient, HubRefused, HubUnavailable
from relaypacs_shared.errors import ChecksumMismatch, RelayError
from relaypacs_shared.wire import CommitRequest, ManifestEntry

log = structlog.get_logger("relaypacs.agent.uplink")


class Sender:
    def __init__(
        self,
        store: Store,
        client: HubClient,
        ingestor: Ingestor,
        *,
        quiet_period: float,
        retry_max: float,
        status_poll: float,
    ) -> None:
        self.store = store
        self.client = client
        self.ingestor = ingestor
        self.quiet_period = quiet_period
        self.retry_max = retry_max
        self.status_poll = status_poll
        self._last_poll = 0.0
        self.wake = threading.Event()

    def _backoff(self, attempts: int) -> float:
        return float(min(self.retry_max, 2.0**attempts) * random.uniform(0.5, 1.0))  # noqa: S311

    def run_once(self) -> int:
        """Send every due study once; returns how many were committed."""
        committed = 0
        for study in self.store.due_studies(self.quiet_period):
            uid = study["study_instance_uid"]
            try:
                if self.send_study(uid, study["service_level"], study["last_instance_at"]):
                    committed += 1
            except (HubUnavailable, ChecksumMismatch) as exc:
                self.store.defer_study(uid, str(exc), self._backoff(study["attempts"]))
                log.warning("study_deferred", study_uid=uid, error=str(exc)[:200])
                break  # the hub is unreachable: do not hammer it study after study
            except RelayError as exc:
                self.store.defer_study(uid, str(exc), self._backoff(study["attempts"]))
                log.warning("study_deferred", study_uid=uid, error=str(exc)[:200])
        if time.monotonic() - self._last_poll >= self.status_poll:
            self._last_poll = time.monotonic()
            self.poll_committed()
        return committed

    def send_study(self, study_uid: str, service_level: str, last_instance_at: float) -> bool:
        bound = log.bind(study_uid=study_uid)
        for inst in self.store.study_instances(study_uid, "spooled"):
            try:
                self.client.put_instance(
                    study_uid,
                    inst["sop_instance_uid"],
                    Path(inst["spool_path"]),
                    inst["sha256"],
                    inst["size"],
                )
            except HubRefused as exc:
                if exc.status == 422 or exc.code == "conflict":
                    self._refused(inst["sop_instance_uid"], Path(inst["spool_path"]), exc)
                    continue
                raise
            self.store.mark_uploaded(inst["sop_instance_uid"])
        uploaded = self.store.study_instances(study_uid, "uploaded")
        if not uploaded:
            return False
        request = CommitRequest(
            service_level="stat" if service_level == "stat" else "routine",
            instances=[
                ManifestEntry(sop_instance_uid=i["sop_instance_uid"], sha256=i["sha256"])
                for i in uploaded
            ],
        )
        try:
            status = self.client.commit(study_uid, request)
        except HubRefused as exc:
            if exc.code == "incomplete" and exc.missing:
                # The hub lost or never kept some instances: send those again.
                self.store.mark_spooled(exc.missing)
            raise
        if self.store.mark_committed(study_uid, last_instance_at, status.model_dump_json()):
            bound.info("study_committed", instances=len(uploaded))
            return True
        return False

    def _refused(self, sop_uid: str, spool: Path, exc: HubRefused) -> None:
        """The hub will never take this instance: keep its bytes in quarantine with the reason."""
        self.store.mark_refused(sop_uid)
        tmp = spool.with_name(spool.name + ".refused")
        try:
            tmp.write_bytes(spool.read_bytes())
            self.ingestor.quarantine(
                tmp,
                source="hub",
                reason=f"hub_{exc.code}",
                message=f"the hub refused the instance: {exc.detail}",
                sop_uid=sop_uid,
            )
        except OSError as err:
            log.error("refused_quarantine_failed", error=str(err))
        log.warning("instance_refused_by_hub", sop_uid=sop_uid, code=exc.code)

    def poll_committed(self) -> None:
        for study in self.store.committed_studies():
            uid = study["study_instance_uid"]
            try:
                status = self.client.study_status(uid)
            except RelayError:
                return
            if status.delivered_everywhere:
                self.store.mark_delivered(uid, status.model_dump_json())
                log.info("study_delivered", study_uid=uid)
            else:
                self.store.set_hub_status(uid, status.model_dump_json())

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("sender_loop_error")
            self.wake.wait(interval)
            self.wake.clear()
