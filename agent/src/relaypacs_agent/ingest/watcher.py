"""A watched folder: find files, wait until each is complete, hand it to the ingestor.

watchdog events only wake the scanner early; the scan itself is the source of truth, so files
that arrived while the agent was down, or whose events were lost, are found all the same. A file
is complete when its size and mtime have not changed for ``settle_seconds`` (a slow USB stick or
share keeps changing one or the other while it copies). The scan is recursive.

- a zip archive is expanded safely (``archive.Importer``) once it has settled;
- below a folder holding a DICOMDIR (a CD or USB export), files that are not DICOM (the viewer,
  autorun files) are left alone instead of quarantined, and the DICOMDIR itself is not an image;
  once every image it lists has been taken (move mode), the DICOMDIR and the folders its images
  emptied are removed; files that were not taken (the viewer) are never removed;
- in copy mode the originals stay and are remembered (path, size, mtime) in the catalogue, so
  they are not taken twice, even after a restart; a file changed since is taken again;
- a file that vanishes is forgotten; one that cannot be read (locked, permissions) or that the
  disk reserve refuses is retried later with a growing delay, without blocking the others.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from relaypacs_agent.ingest.archive import Importer, is_dicomdir, is_zip
from relaypacs_agent.ingest.pipeline import DiskFull, Ingestor, IngestResult, Source
from relaypacs_agent.store.db import SourceFile
from relaypacs_shared.archives import safe_relative_path
from relaypacs_shared.dicom import has_dicm_marker

log = structlog.get_logger("relaypacs.agent.watcher")

# Names that copy tools use while a file is still being written.
_PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".filepart")
_MAX_RETRY_DELAY = 300.0


def file_ref(path: Path) -> str:
    """A stable stand-in for a file in logs: its path hashed (file names carry patient names)."""
    return hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def is_candidate(name: str) -> bool:
    return not name.startswith(".") and not name.lower().endswith(_PARTIAL_SUFFIXES)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float
    retry_at: float = 0.0
    failures: int = 0


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
        source: Source | str = "folder",
        importer: Importer | None = None,
        workers: int = 1,
        create: bool = True,
    ) -> None:
        self.inbox = inbox
        self.ingestor = ingestor
        self.settle = settle_seconds
        self.interval = scan_interval
        self.source = Source(kind=source) if isinstance(source, str) else source
        if self.source.keep_original and not self.source.folder_key:
            self.source = replace(self.source, folder_key=str(inbox))
        self.importer = importer
        self.workers = workers
        self.create = create
        self._seen: dict[Path, _Seen] = {}
        # Copy mode: what was taken already; media: what is not DICOM. Both: path -> (size, mtime)
        self._done: dict[Path, tuple[int, int]] | None = None
        self._ignored: dict[Path, tuple[int, int]] = {}
        self._wake = threading.Event()
        self.results: dict[str, int] = {}
        # Move mode, below a DICOMDIR: what this run took (upper-cased paths), and the index's
        # (size, mtime, images taken) when it was last found not done yet.
        self._media_taken: set[str] = set()
        self._media_checked: dict[Path, tuple[int, int, int]] = {}

    @property
    def copy_mode(self) -> bool:
        return self.source.keep_original

    def _load_done(self) -> dict[Path, tuple[int, int]]:
        if self._done is None:
            self._done = {}
            if self.copy_mode and self.source.folder_key:
                stored = self.ingestor.store.source_files(self.source.folder_key)
                self._done = {Path(p): v for p, v in stored.items()}
        return self._done

    def scan_once(self, now: float | None = None) -> list[IngestResult]:
        """One pass: update what is seen, ingest what has settled. Returns what was ingested."""
        now = time.monotonic() if now is None else now
        done_before = self._load_done()
        present: set[Path] = set()
        ready: list[tuple[Path, _Seen, bool]] = []
        media_roots: list[str] = []
        for root, dirs, files in os.walk(self.inbox):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if any(is_dicomdir(Path(n)) for n in files):
                media_roots.append(root)
            in_media = any(root == m or root.startswith(m + os.sep) for m in media_roots)
            for name in sorted(files):
                if not is_candidate(name):
                    continue
                path = Path(root) / name
                if in_media and is_dicomdir(path):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                key = (st.st_size, st.st_mtime_ns)
                if done_before.get(path) == key or self._ignored.get(path) == key:
                    continue
                present.add(path)
                seen = self._seen.get(path)
                if seen is None or (seen.size, seen.mtime_ns) != key:
                    self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
                    continue
                if now - seen.stable_since < self.settle or now < seen.retry_at:
                    continue
                ready.append((path, seen, in_media))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        taken = self._take(ready, now)
        if not self.copy_mode:
            for root in media_roots:
                self._tidy_media(Path(root))
        return taken

    def _take(self, ready: list[tuple[Path, _Seen, bool]], now: float) -> list[IngestResult]:
        done: list[IngestResult] = []
        singles: list[tuple[Path, Source]] = []
        by_path: dict[Path, _Seen] = {}
        for path, seen, in_media in ready:
            if self.importer is not None and is_zip(path):
                self._import_zip(path, seen, now, done)
            elif in_media and not has_dicm_marker(path):
                # The viewer or autorun of a CD export: not ours to judge, leave it.
                self._ignored[path] = (seen.size, seen.mtime_ns)
                self._seen.pop(path, None)
            else:
                singles.append((path, self.source))
                by_path[path] = seen
        outcomes: list[tuple[Path, IngestResult | BaseException]] = []
        lock = threading.Lock()

        def collect(path: Path, result: IngestResult | BaseException) -> None:
            with lock:
                outcomes.append((path, result))

        if singles:
            self.ingestor.ingest_many(iter(singles), workers=self.workers, on_result=collect)
        media = {path for path, _seen, in_media in ready if in_media}
        for path, result in outcomes:
            seen = by_path[path]
            if isinstance(result, IngestResult):
                self._finished(path, seen)
                if path in media and not self.copy_mode:
                    self._media_taken.add(str(path).upper())
                self.results[result.outcome] = self.results.get(result.outcome, 0) + 1
                done.append(result)
            else:
                self._failed(path, seen, result, now)
        if done:
            log.info(
                "folder_ingested",
                folder=self.source.name or str(self.inbox),
                **_count(r.outcome for r in done),
            )
        return done

    def _import_zip(self, path: Path, seen: _Seen, now: float, done: list[IngestResult]) -> None:
        assert self.importer is not None
        try:
            summary = self.importer.import_zip(path, self.source)
        except Exception as exc:
            self._failed(path, seen, exc, now)
            return
        if summary.errors:
            self._failed(path, seen, OSError("; ".join(summary.errors[:3])), now)
            return
        if self.copy_mode and self.source.folder_key:
            sf = SourceFile(self.source.folder_key, str(path), seen.size, seen.mtime_ns)
            self.ingestor.store.record_source_file(sf, "imported")
        self._finished(path, seen)
        for outcome, n in summary.counts.items():
            self.results[outcome] = self.results.get(outcome, 0) + n
        if summary.refused:
            self.results["quarantined"] = self.results.get("quarantined", 0) + 1
            done.append(IngestResult("quarantined", summary.refused))

    def _tidy_media(self, root: Path) -> None:
        """Remove a CD export's DICOMDIR and emptied folders once every image it lists is taken.

        An image counts as taken when it is no longer in the folder and either this run took it
        or (after a restart) its SOP Instance UID is in the catalogue. A DICOMDIR whose images
        are still arriving, or one that cannot be read, is left alone.
        """
        if any(p.is_relative_to(root) for p in self._seen):
            return  # something below it is still settling
        dicomdir = next((p for p in sorted(root.iterdir()) if is_dicomdir(p)), None)
        if dicomdir is None:
            return
        try:
            st = dicomdir.stat()
        except FileNotFoundError:
            return
        taken_here = {t for t in self._media_taken if t.startswith(str(root).upper() + os.sep)}
        key = (st.st_size, st.st_mtime_ns, len(taken_here))
        if self._media_checked.get(dicomdir) == key:
            return  # nothing changed since it was found not done
        self._media_checked[dicomdir] = key
        refs = _references(dicomdir)
        if not refs:
            return
        present = {
            str(Path(d, n).relative_to(root)).upper()
            for d, _dirs, names in os.walk(root)
            for n in names
        }
        for rel, sop in refs:
            if rel.upper() in present:
                return  # not taken (yet)
            if str(root / rel).upper() not in taken_here and not (
                sop and self.ingestor.store.get_instance(sop) is not None
            ):
                return  # never seen: still to arrive
        dicomdir.unlink(missing_ok=True)
        self._media_checked.pop(dicomdir, None)
        self._media_taken -= taken_here
        ref_dirs = {
            str(Path(*Path(rel).parts[:i])).upper()
            for rel, _sop in refs
            for i in range(1, len(Path(rel).parts))
        }
        removed = 0
        for d, _dirs, _names in os.walk(root, topdown=False):
            folder = Path(d)
            inside = folder != root and str(folder.relative_to(root)).upper() in ref_dirs
            if inside or (folder == root and root != self.inbox):
                try:
                    folder.rmdir()  # only if empty: never a file that was not taken
                    removed += 1
                except OSError:
                    pass
        log.info(
            "media_tidied", folder_ref=file_ref(root), images=len(refs), folders_removed=removed
        )

    def _finished(self, path: Path, seen: _Seen) -> None:
        self._seen.pop(path, None)
        if self.copy_mode:
            self._load_done()[path] = (seen.size, seen.mtime_ns)

    def _failed(self, path: Path, seen: _Seen, exc: BaseException, now: float) -> None:
        if isinstance(exc, FileNotFoundError):
            self._seen.pop(path, None)  # vanished between scan and ingest: nothing was taken
            return
        seen.failures += 1
        delay = min(_MAX_RETRY_DELAY, max(self.settle, 5.0) * 2 ** (seen.failures - 1))
        seen.retry_at = now + delay
        if isinstance(exc, DiskFull):
            return  # the ingestor logs the reserve once a minute
        if isinstance(exc, OSError):
            # Locked, unreadable for now, or the disk is full: leave it and retry later.
            log.warning(
                "ingest_deferred",
                file_ref=file_ref(path),
                error=f"{type(exc).__name__}: {exc.strerror or ''}"[:200],
                retry_in=round(delay),
            )
        else:
            # A bug must not stall the inbox: leave this file, go on with the others.
            log.error(
                "ingest_failed",
                file_ref=file_ref(path),
                error_type=type(exc).__name__,  # not the message: it may quote a path or a tag
                retry_in=round(delay),
            )

    def run(self, stop: threading.Event) -> None:
        if self.create:
            self.inbox.mkdir(parents=True, exist_ok=True)
        observer = None
        warned = 0.0
        try:
            while not stop.is_set():
                if not self.inbox.is_dir():
                    if time.monotonic() - warned > 60:
                        warned = time.monotonic()
                        log.warning("folder_unavailable", folder=str(self.inbox))
                    stop.wait(self.interval * 5)
                    continue
                if observer is None:
                    observer = Observer()
                    observer.schedule(_Wake(self._wake), str(self.inbox), recursive=True)
                    observer.daemon = True
                    observer.start()
                    log.info("watching", folder=str(self.inbox), mode=self._mode())
                try:
                    self.scan_once()
                except Exception:
                    log.exception("scan_failed")
                self._wake.wait(self.interval if not self._seen else min(self.interval, 0.5))
                self._wake.clear()
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)

    def _mode(self) -> str:
        return "copy" if self.copy_mode else "move"


def _references(dicomdir: Path) -> list[tuple[str, str]]:
    """(relative path, SOP Instance UID) of each file a DICOMDIR lists; [] if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(dicomdir, force=True)
        out = []
        for record in ds.get("DirectoryRecordSequence", []) or []:
            file_id = record.get("ReferencedFileID")
            if not file_id:
                continue
            parts = [file_id] if isinstance(file_id, str) else list(file_id)
            rel = str(safe_relative_path("/".join(str(p).strip() for p in parts)))
            sop = str(record.get("ReferencedSOPInstanceUIDInFile", "") or "").rstrip("\x00 ")
            out.append((rel.replace("/", os.sep), sop))
        return out
    except Exception as exc:
        log.warning("dicomdir_unreadable", error=f"{type(exc).__name__}: {exc}"[:200])
        return []


def _count(values: object) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:  # type: ignore[attr-defined]
        out[str(v)] = out.get(str(v), 0) + 1
    return out
