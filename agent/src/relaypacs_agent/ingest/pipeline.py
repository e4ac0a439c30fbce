"""Take one complete file in: check, stage, validate, deduplicate, spool, record, let go.

1. cheap checks on the original (size, ``DICM`` marker) and the disk reserve;
2. stage into ``staging/`` beside the spool: a hard link (move mode, same filesystem) or a copy
   hashed on the way; fsync (a file the agent wrote itself, from C-STORE or an archive, is
   hashed and fsynced where it lies instead);
3. validate the staged bytes (header only) — those are the bytes that will be kept;
4. under the ingest lock: same SOP Instance UID held? same hash: duplicate; other: conflict;
5. rename the staged file to its content address, fsync the folder, record the row;
6. only then remove the original (move mode) or remember it (copy mode).

A crash at any point is harmless: staging leftovers are removed at start, a spool file without a
row is reused, and a file seen again after its row was committed is recognised (same UID, same
bytes, same source path) and just let go. Every file ends as exactly one of: an instance, a
duplicate, or a quarantine entry.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import structlog
from pydicom.uid import UID

from relaypacs_agent.ingest.files import (
    copy_durable,
    hash_and_sync,
    link_into,
    move_durable,
    place_in_spool,
    remove_orphans,
    stage_copy,
)
from relaypacs_agent.store.db import IntegrityError, SourceFile, Store
from relaypacs_shared.dicom import (
    DEFAULT_MAX_SEQUENCE_DEPTH,
    InstanceInfo,
    precheck_file,
    raw_dataset_syntax,
    sha256_file,
    validate_file,
    wrap_raw_dataset,
)
from relaypacs_shared.errors import DicomValidationError, StorageError, Transient

log = structlog.get_logger("relaypacs.agent.ingest")

Outcome = Literal["accepted", "duplicate", "quarantined", "replayed"]


class DiskFull(StorageError, Transient):
    """Taking this file in would eat into the disk reserve: it stays where it is, for later."""


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    reason: str = ""
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    size: int = 0
    message: str = ""  # a refusal in words (quarantined only)


@dataclass(frozen=True)
class Source:
    """Where a file comes from and the defaults it gives the studies it opens."""

    kind: str = "folder"  # folder | dimse | zip | media | import | released | hub
    name: str = ""  # folder name, calling AE title, ...
    service_level: str | None = None  # None: the ingestor's default
    quiet_period: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    keep_original: bool = False  # copy mode: the original stays where it is
    owned: bool = False  # the agent wrote this file itself: rename it, do not copy it
    source_path: str | None = None  # what to record as its origin (an archive member)
    folder_key: str | None = None  # copy mode: remember the file under this folder
    display_name: str | None = None  # the name people know (an archive member's, not a temp)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


class Ingestor:
    def __init__(
        self,
        store: Store,
        *,
        spool_dir: Path,
        quarantine_dir: Path,
        max_instance_bytes: int,
        service_level: str = "routine",
        min_free_bytes: int = 0,
        max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
    ) -> None:
        self.store = store
        self.spool_dir = spool_dir
        # Beside the spool (same filesystem, so a rename lands the file), not inside it.
        self.staging_dir = spool_dir.parent / "staging"
        self.quarantine_dir = quarantine_dir
        self.max_instance_bytes = max_instance_bytes
        self.service_level = service_level
        self.min_free_bytes = min_free_bytes
        self.max_sequence_depth = max_sequence_depth
        # Held only for the lookup + rename + insert of one instance, never for I/O on its bytes.
        self._lock = threading.Lock()
        self._last_full_log = 0.0
        spool_dir.mkdir(parents=True, exist_ok=True)
        quarantine_dir.mkdir(parents=True, exist_ok=True)

    # -- the one entry point ---------------------------------------------------------------

    def ingest(self, path: Path, source: Source | str = "folder") -> IngestResult:
        src = Source(kind=source) if isinstance(source, str) else source
        sf = self._source_file(path, src)
        try:
            size = precheck_file(path, max_bytes=self.max_instance_bytes)
        except DicomValidationError as exc:
            ts = raw_dataset_syntax(path) if exc.reason == "not_dicom" else None
            if ts is not None:
                return self._ingest_raw(path, src, sf, ts)
            self.quarantine(
                path, source=src.label, reason=exc.reason, message=exc.message,
                keep_original=src.keep_original, source_file=sf, original_name=src.display_name,
            )  # fmt: skip
            return IngestResult("quarantined", exc.reason, message=exc.message)
        if not src.owned:
            self.check_reserve(size)
        staged, sha = self._stage(path, src)
        try:
            try:
                info = validate_file(
                    staged,
                    max_bytes=self.max_instance_bytes,
                    max_depth=self.max_sequence_depth,
                    sha256=sha,
                )
            except DicomValidationError as exc:
                self.quarantine(
                    path, source=src.label, reason=exc.reason, message=exc.message, sha256=sha,
                    keep_original=src.keep_original, source_file=sf,
                    original_name=src.display_name,
                )  # fmt: skip
                return IngestResult("quarantined", exc.reason, size=size, message=exc.message)
            return self._record(path, staged, info, src, sf)
        finally:
            if staged != path:
                staged.unlink(missing_ok=True)  # gone already if it was spooled

    def _ingest_raw(self, path: Path, src: Source, sf: SourceFile | None, ts: UID) -> IngestResult:
        """A dataset without its Part 10 header: wrap a copy in one (transfer syntax inferred),
        validate and keep the wrapped bytes, and record that they were wrapped. Refused, the
        original goes to quarantine as it came."""
        size = path.stat().st_size
        if not src.owned:
            self.check_reserve(size)
        staged = self.staging_dir / f"{os.getpid()}-{uuid.uuid4().hex}.tmp"
        try:
            try:
                hashes = wrap_raw_dataset(path, staged, ts)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFull(f"the spool's disk is full: {exc}") from exc
                raise
            if hashes is None:
                message = (
                    "not a DICOM file: no 'DICM' marker, and no dataset with SOP Class and "
                    "Instance UIDs at its start"
                )
                self.quarantine(
                    path, source=src.label, reason="not_dicom", message=message,
                    keep_original=src.keep_original, source_file=sf,
                    original_name=src.display_name,
                )  # fmt: skip
                return IngestResult("quarantined", "not_dicom", size=size, message=message)
            sha, original_sha = hashes
            try:
                info = validate_file(
                    staged,
                    max_bytes=self.max_instance_bytes + 1024,  # room for the added header
                    max_depth=self.max_sequence_depth,
                    sha256=sha,
                )
            except DicomValidationError as exc:
                message = f"a dataset without a DICOM header, refused once wrapped: {exc.message}"
                self.quarantine(
                    path, source=src.label, reason=exc.reason, message=message,
                    sha256=original_sha, keep_original=src.keep_original, source_file=sf,
                    original_name=src.display_name,
                )  # fmt: skip
                return IngestResult("quarantined", exc.reason, size=size, message=message)
            wrapped = {
                "transfer_syntax": str(ts),
                "original_sha256": original_sha,
                "original_size": str(size),
            }
            note = (
                f"stored without a DICOM file header: RelayPACS added one "
                f"({ts.name} inferred); the original file's SHA-256 is {original_sha}"
            )
            info = replace(info, warnings=(*info.warnings, note))
            return self._record(path, staged, info, src, sf, wrapped=wrapped)
        finally:
            staged.unlink(missing_ok=True)  # gone already if it was spooled

    def _stage(self, path: Path, src: Source) -> tuple[Path, str]:
        if src.owned:
            return path, hash_and_sync(path)
        if not src.keep_original:
            # Move mode on the spool's filesystem: a hard link instead of a copy halves what
            # the disk writes (an SD card's scarcest resource). The original keeps its name
            # until the row is committed, so a crash before that loses nothing.
            linked = link_into(path, self.staging_dir)
            if linked is not None:
                try:
                    return linked, hash_and_sync(linked)
                except BaseException:
                    linked.unlink(missing_ok=True)
                    raise
        try:
            return stage_copy(path, self.staging_dir)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(f"the spool's disk is full: {exc}") from exc
            raise

    def _record(
        self,
        path: Path,
        staged: Path,
        info: InstanceInfo,
        src: Source,
        sf: SourceFile | None,
        wrapped: dict[str, str] | None = None,
    ) -> IngestResult:
        source_path = src.source_path or str(path)
        bound = log.bind(study_uid=info.study_instance_uid, sop_uid=info.sop_instance_uid)
        with self._lock:
            existing = self.store.get_instance(info.sop_instance_uid)
            if existing is None:
                spooled = place_in_spool(staged, self.spool_dir, info.sha256)
                try:
                    self.store.add_instance(
                        info,
                        spool_path=spooled,
                        source=src.kind,
                        source_path=source_path,
                        service_level=src.service_level or self.service_level,
                        origin=src.name,
                        quiet_period=src.quiet_period,
                        metadata=dict(src.metadata),
                        source_file=sf,
                        wrapped=wrapped,
                    )
                except IntegrityError:
                    # Another process (``relaypacs-agent import``) recorded it first.
                    existing = self.store.get_instance(info.sop_instance_uid)
                    if existing is None:
                        raise
                else:
                    self._let_go(path, src)
                    bound.debug("instance_accepted", size=info.size, modality=info.modality)
                    return IngestResult(
                        "accepted", "", info.sop_instance_uid, info.study_instance_uid, info.size
                    )
        if existing["sha256"] == info.sha256:
            if existing["source_path"] != source_path:
                self.store.add_duplicate(
                    info.sop_instance_uid,
                    info.sha256,
                    src.display_name or path.name,
                    src.label,
                    source_file=sf,
                )
                outcome: Outcome = "duplicate"
            else:
                outcome = "replayed"  # our own crash between record and letting go
                if sf is not None:
                    self.store.record_source_file(sf, "accepted")
            self._let_go(path, src)
            bound.info("instance_" + outcome)
            return IngestResult(
                outcome, "", info.sop_instance_uid, info.study_instance_uid, info.size
            )
        self.quarantine(
            path,
            source=src.label,
            reason="conflict",
            message="an instance with this SOP Instance UID but different content is already "
            "held; a person must decide which one is right",
            sha256=info.sha256,
            sop_uid=info.sop_instance_uid,
            keep_original=src.keep_original,
            source_file=sf,
            original_name=src.display_name,
        )
        return IngestResult(
            "quarantined",
            "conflict",
            info.sop_instance_uid,
            info.study_instance_uid,
            info.size,
            message="an instance with this SOP Instance UID but different content is already "
            "held; a person must decide which one is right",
        )

    def _let_go(self, path: Path, src: Source) -> None:
        if src.keep_original or src.owned:
            # Copy mode keeps it; an owned file was renamed into the spool or is gone, or (a
            # wrapped raw dataset) its owner removes it like any temporary file of its own.
            return
        # No fsync of the folder: if the unlink is lost to a crash, the file is seen again and
        # recognised as replayed.
        path.unlink(missing_ok=True)

    @staticmethod
    def _source_file(path: Path, src: Source) -> SourceFile | None:
        if not (src.keep_original and src.folder_key):
            return None
        st = path.stat()
        return SourceFile(src.folder_key, str(path), st.st_size, st.st_mtime_ns)

    # -- many files at once ----------------------------------------------------------------

    def ingest_many(
        self,
        items: Iterable[tuple[Path, Source]],
        *,
        workers: int = 2,
        on_result: Callable[[Path, IngestResult | BaseException], None] | None = None,
    ) -> dict[str, int]:
        """Ingest files on ``workers`` threads (hashing and fsync release the GIL, so two
        threads overlap one file's parse with another's copy). Returns counts by outcome;
        an error on one file (disk full, unreadable) is counted as ``error`` and reported to
        ``on_result``, the others go on."""
        counts: dict[str, int] = {}

        def one(item: tuple[Path, Source]) -> None:
            path, src = item
            result: IngestResult | BaseException
            key: str
            try:
                result = self.ingest(path, src)
                key = result.outcome
            except Exception as exc:
                result = exc
                key = "error"
            with self._lock:
                counts[key] = counts.get(key, 0) + 1
            if on_result is not None:
                on_result(path, result)

        if workers <= 1:
            for item in items:
                one(item)
            return counts
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
            # Bounded submission: a 100 000-file folder must not queue 100 000 futures.
            pending: list[object] = []
            for item in items:
                pending.append(pool.submit(one, item))
                if len(pending) >= workers * 4:
                    pending.pop(0).result()  # type: ignore[attr-defined]
            for fut in pending:
                fut.result()  # type: ignore[attr-defined]
        return counts

    # -- disk reserve ------------------------------------------------------------------------

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.spool_dir).free

    def check_reserve(self, incoming: int) -> None:
        """Refuse new work that would leave less than ``min_free_bytes`` on the spool's disk."""
        if self.min_free_bytes <= 0:
            return
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            now = time.monotonic()
            if now - self._last_full_log > 60:
                self._last_full_log = now
                log.error(
                    "disk_reserve_reached",
                    free_bytes=free,
                    reserve_bytes=self.min_free_bytes,
                    incoming_bytes=incoming,
                )
            raise DiskFull(
                f"refusing new work: {free} bytes free on the spool's disk, {incoming} needed, "
                f"{self.min_free_bytes} kept in reserve"
            )

    def cleanup_staging(self) -> int:
        """Staging files of processes that died (a crash mid-copy); safe while others run."""
        return remove_orphans(self.staging_dir)

    # -- quarantine --------------------------------------------------------------------------

    def quarantine(
        self,
        path: Path,
        *,
        source: str,
        reason: str,
        message: str,
        sha256: str | None = None,
        sop_uid: str | None = None,
        keep_original: bool = False,
        source_file: SourceFile | None = None,
        original_name: str | None = None,
    ) -> Path:
        """Move (copy mode: copy) the file aside with a sidecar saying why; never delete it."""
        name = original_name or path.name
        size = path.stat().st_size
        if sha256 is None:
            sha256 = sha256_file(path)
        now = time.time()
        folder = self.quarantine_dir / time.strftime("%Y%m%d", time.gmtime(now))
        quarantine_id = uuid.uuid4().hex[:12]
        dest = folder / f"{quarantine_id}_{name}"
        sidecar = dest.with_name(dest.name + ".reason.json")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sidecar.write_text(
                json.dumps(
                    {
                        "original_name": name,
                        "source": source,
                        "reason": reason,
                        "message": message,
                        "size": size,
                        "sha256": sha256,
                        "sop_instance_uid": sop_uid,
                        "quarantined_at": now,
                    },
                    indent=2,
                ),
                encoding="utf-8",
            )
            if keep_original:
                copy_durable(path, dest)
            else:
                move_durable(path, dest)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # No room even for the reason: the file stays where it is (its sender keeps its
            # copy too) and is taken in, or set aside, once space is back.
            sidecar.unlink(missing_ok=True)
            if keep_original or path.exists():
                dest.unlink(missing_ok=True)
            raise DiskFull(f"no space to set a file aside in quarantine: {exc.strerror}") from exc
        self.store.add_quarantine(
            path=dest,
            original_name=name,
            source=source,
            reason=reason,
            message=message,
            size=size,
            sha256=sha256,
            sop_uid=sop_uid,
            at=now,
            source_file=source_file,
        )
        # Never the file name: exported files are often named after the patient.
        log.warning(
            "file_quarantined",
            quarantine_id=quarantine_id,
            reason=reason,
            size=size,
            sha256=sha256[:16],
            source=source,
        )
        return dest

    def reconcile_quarantine(self) -> int:
        """Record quarantined files whose catalogue row was lost to a crash (sidecars say why)."""
        known = self.store.quarantine_paths()
        added = 0
        for sidecar in self.quarantine_dir.glob("*/*.reason.json"):
            dest = sidecar.with_name(sidecar.name.removesuffix(".reason.json"))
            if str(dest) in known:
                continue
            if not dest.exists():
                sidecar.unlink()  # the move never happened: the original is still in the inbox
                continue
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            self.store.add_quarantine(
                path=dest,
                original_name=meta["original_name"],
                source=meta["source"],
                reason=meta["reason"],
                message=meta["message"],
                size=meta["size"],
                sha256=meta.get("sha256"),
                sop_uid=meta.get("sop_instance_uid"),
                at=meta.get("quarantined_at"),
            )
            added += 1
        return added
