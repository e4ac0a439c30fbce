"""The watched folder: find files, wait until each is complete, hand it to the ingestor.

watchdog events only wake the scanner early; the scan itself is the source of truth, so files
that arrived while the agent was down, or whose events were lost, are found all the same. A file
is complete when its size and mtime have not changed for ``settle_seconds``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from relaypacs_agent.ingest.pipeline import Ingestor, IngestResult

log = structlog.get_logger("relaypacs.agent.watcher")

# Names that copy tools use while a file is still being written.
_PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".filepart")


def is_candidate(name: str) -> bool:
    return not name.startswith(".") and not name.lower().endswith(_PARTIAL_SUFFIXES)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float
    retry_at: float = 0.0


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.event.set()


class InboxWatcher:
    def __init__(
        self,
        inbox: Path,
        ingestor: Ingestor,
        *,
        settle_seconds: float,
        scan_interval: float,
        source: str = "folder",
    ) -> None:
        self.inbox = inbox
        self.ingestor = ingestor
        self.settle = settle_seconds
        self.interval = scan_interval
        self.source = source
        self._seen: dict[Path, _Seen] = {}
        self._wake = threading.Event()
        self.results: dict[str, int] = {}

    def scan_once(self, now: float | None = None) -> list[IngestResult]:
        """One pass: update what is seen, ingest what has settled. Returns what was ingested."""
        now = time.monotonic() if now is None else now
        present: set[Path] = set()
        done: list[IngestResult] = []
        for root, dirs, files in os.walk(self.inbox):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if not is_candidate(name):
                    continue
                path = Path(root) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                present.add(path)
                seen = self._seen.get(path)
                if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                    self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
                    continue
                if now - seen.stable_since < self.settle or now < seen.retry_at:
                    continue
                try:
                    result = self.ingestor.ingest(path, self.source)
                except FileNotFoundError:
                    continue  # vanished between scan and ingest: nothing of it was taken
                except OSError as exc:
                    # Locked, unreadable for now, or the disk is full: leave it and retry later.
                    seen.retry_at = now + max(self.settle, 5.0)
                    log.warning("ingest_deferred", file=path.name, error=str(exc))
                    continue
                except Exception:
                    # A bug must not stall the inbox: leave this file in place, go on with the
                    # others, and try it again later.
                    seen.retry_at = now + 60.0
                    log.exception("ingest_failed", file=path.name)
                    continue
                self._seen.pop(path, None)
                self.results[result.outcome] = self.results.get(result.outcome, 0) + 1
                done.append(result)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return done

    def run(self, stop: threading.Event) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(_Wake(self._wake), str(self.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        log.info("watching", inbox=str(self.inbox))
        try:
            while not stop.is_set():
                try:
                    self.scan_once()
                except Exception:
                    log.exception("scan_failed")
                self._wake.wait(self.interval if not self._seen else min(self.interval, 0.5))
                self._wake.clear()
        finally:
            observer.stop()
            observer.join(timeout=5)
