"""Imports of many files at once: zip archives, DICOMDIR media (CD/USB exports), plain folders.

A zip is checked whole before a byte is written (``relaypacs_shared.archives``: names, sizes,
ratios); members are then inflated one at a time into ``incoming/`` with the bytes actually
inflated counted, and each is ingested as a file the agent owns (renamed into the spool, not
copied again). A refused archive is quarantined whole with its reason.

Media and archives carry more than images (viewers, autorun files, PDFs): files without the
DICOM ``DICM`` marker are skipped and listed in the import's summary, not quarantined. A file
with the marker that fails validation is quarantined like any other. The DICOMDIR itself is
an index, not an instance: it is read (to find what it references) and never ingested.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import pydicom
import structlog

from relaypacs_agent.ingest.pipeline import Ingestor, IngestResult, Source
from relaypacs_shared.archives import (
    ArchiveEntry,
    ArchiveLimits,
    ArchiveRefused,
    InflateBudget,
    PlannedMember,
    is_junk,
    plan_extraction,
    referenced_file_ids,
)
from relaypacs_shared.dicom import has_dicm_marker

log = structlog.get_logger("relaypacs.agent.import")

Progress = Callable[[Path, IngestResult | BaseException], None]
MAX_LISTED = 50


def is_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def is_dicomdir(path: Path) -> bool:
    return path.name.upper() == "DICOMDIR"


@dataclass
class ImportSummary:
    kind: str
    source: str
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # not DICOM (viewer, readme, ...)
    skipped_count: int = 0
    missing: list[str] = field(default_factory=list)  # referenced by the DICOMDIR, not there
    refused: str = ""  # the whole archive was refused (quarantined) with this reason
    errors: list[str] = field(default_factory=list)

    def skip(self, name: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_LISTED:
            self.skipped.append(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "counts": self.counts,
            "skipped": self.skipped,
            "skipped_count": self.skipped_count,
            "missing": self.missing,
            "refused": self.refused,
            "errors": self.errors,
        }

    @property
    def taken(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "error")


class Importer:
    def __init__(
        self,
        ingestor: Ingestor,
        *,
        incoming_dir: Path,
        limits: ArchiveLimits | None = None,
        workers: int = 2,
    ) -> None:
        self.ingestor = ingestor
        self.incoming_dir = incoming_dir
        self.limits = limits or ArchiveLimits()
        self.workers = workers

    # -- what to do with a path --------------------------------------------------------------

    def count(self, path: Path) -> int:
        """How many files an import of ``path`` will look at (for a progress bar)."""
        if path.is_file() and is_zip(path):
            try:
                with zipfile.ZipFile(path) as zf:
                    return sum(1 for i in zf.infolist() if not i.is_dir())
            except (zipfile.BadZipFile, OSError):
                return 1
        if path.is_dir():
            return sum(len(files) for _, _, files in os.walk(path))
        return 1

    def import_path(
        self, path: Path, source: Source, progress: Progress | None = None
    ) -> ImportSummary:
        if path.is_dir():
            return self.import_tree(path, source, progress)
        if is_zip(path):
            return self.import_zip(path, source, progress)
        summary = ImportSummary("file", str(path))
        self._run(summary, iter([(path, source)]), progress)
        return summary

    # -- zip ---------------------------------------------------------------------------------

    def import_zip(
        self, path: Path, source: Source, progress: Progress | None = None
    ) -> ImportSummary:
        summary = ImportSummary("zip", str(path))
        import_id = self.ingestor.store.start_import("zip", str(path))
        bound = log.bind(archive=path.name, import_id=import_id)
        workdir = self.incoming_dir / f"{os.getpid()}-zip-{uuid.uuid4().hex[:12]}"
        try:
            try:
                zf = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
                raise ArchiveRefused(
                    "archive_unreadable", f"not a readable zip archive: {exc}"
                ) from exc
            with zf:
                infos = {i.filename: i for i in zf.infolist()}
                planned = plan_extraction((_entry(i) for i in infos.values()), self.limits)
                self.ingestor.check_reserve(sum(m.file_size for m in planned))
                workdir.mkdir(parents=True, exist_ok=True)
                member_source = replace(source, kind="zip", owned=True, keep_original=False)
                items = self._inflate(zf, infos, planned, workdir, member_source, path, summary)
                self._run(summary, items, progress)
        except ArchiveRefused as exc:
            summary.refused = exc.reason
            self.ingestor.quarantine(
                path,
                source=f"{source.label}",
                reason=exc.reason,
                message=exc.message,
                keep_original=source.keep_original,
            )
            bound.warning("archive_refused", reason=exc.reason)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            self.ingestor.store.finish_import(import_id, summary.as_dict())
        if not summary.refused and not source.keep_original and not summary.errors:
            path.unlink(missing_ok=True)  # every member is now an instance, duplicate, or kept
        if not summary.refused:
            bound.info("archive_imported", **summary.counts, skipped=summary.skipped_count)
        return summary

    def _inflate(
        self,
        zf: zipfile.ZipFile,
        infos: dict[str, zipfile.ZipInfo],
        planned: list[PlannedMember],
        workdir: Path,
        source: Source,
        archive: Path,
        summary: ImportSummary,
    ) -> Iterator[tuple[Path, Source]]:
        for n, member in enumerate(planned):
            if is_dicomdir(Path(member.path.name)):
                continue
            info = infos[member.name]
            dest = workdir / f"{os.getpid()}-{n:06d}-{member.path.name[:80]}"
            budget = InflateBudget(member, info.compress_size, self.limits)
            with zf.open(info) as fin, dest.open("wb") as fout:
                while block := fin.read(1024 * 1024):
                    budget.add(len(block))
                    fout.write(block)
            if not has_dicm_marker(dest):
                summary.skip(str(member.path))
                dest.unlink(missing_ok=True)
                continue
            yield (
                dest,
                replace(
                    source, source_path=f"{archive}!{member.path}", display_name=member.path.name
                ),
            )

    # -- folders and media ---------------------------------------------------------------------

    def import_tree(
        self, root: Path, source: Source, progress: Progress | None = None
    ) -> ImportSummary:
        """A DICOMDIR medium or a plain folder: every DICOM file in it, zips expanded."""
        dicomdir = next((p for p in root.iterdir() if is_dicomdir(p) and p.is_file()), None)
        kind = "media" if dicomdir else "folder"
        summary = ImportSummary(kind, str(root))
        import_id = self.ingestor.store.start_import(kind, str(root))
        if dicomdir is not None:
            summary.missing = self._missing_references(root, dicomdir)
        zips: list[Path] = []
        file_source = replace(source, kind=kind if source.kind == "import" else source.kind)

        def files() -> Iterator[tuple[Path, Source]]:
            for dirpath, dirnames, names in os.walk(root):
                dirnames.sort()
                for name in sorted(names):
                    p = Path(dirpath) / name
                    if is_dicomdir(p):
                        continue
                    if is_junk(PurePosixPath(p.relative_to(root).as_posix())) or not p.is_file():
                        summary.skip(str(p.relative_to(root)))
                        continue
                    if has_dicm_marker(p):
                        yield p, file_source
                    elif is_zip(p):
                        zips.append(p)
                    else:
                        summary.skip(str(p.relative_to(root)))

        try:
            self._run(summary, files(), progress)
            for z in zips:
                inner = self.import_zip(z, source, progress)
                for k, v in inner.counts.items():
                    summary.counts[k] = summary.counts.get(k, 0) + v
                if inner.refused:
                    summary.counts["quarantined"] = summary.counts.get("quarantined", 0) + 1
        finally:
            self.ingestor.store.finish_import(import_id, summary.as_dict())
        log.info(
            "import_done", kind=kind, **summary.counts, skipped=summary.skipped_count,
            missing=len(summary.missing),
        )  # fmt: skip
        return summary

    @staticmethod
    def _missing_references(root: Path, dicomdir: Path) -> list[str]:
        """Files the DICOMDIR lists that are not on the medium (a badly burnt CD)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(dicomdir, force=True)
            refs = referenced_file_ids(ds)
        except Exception as exc:  # an unreadable index: the files are imported all the same
            log.warning("dicomdir_unreadable", error=f"{type(exc).__name__}: {exc}"[:200])
            return []
        present = {
            str(Path(d, n).relative_to(root)).upper()
            for d, _, names in os.walk(root)
            for n in names
        }
        return [str(r) for r in refs if str(r).upper() not in present][:MAX_LISTED]

    # -- shared ----------------------------------------------------------------------------------

    def _run(
        self,
        summary: ImportSummary,
        items: Iterator[tuple[Path, Source]],
        progress: Progress | None,
    ) -> None:
        def on_result(path: Path, result: IngestResult | BaseException) -> None:
            if isinstance(result, BaseException) and len(summary.errors) < MAX_LISTED:
                summary.errors.append(f"{path.name}: {type(result).__name__}: {result}"[:300])
            if progress is not None:
                progress(path, result)

        counts = self.ingestor.ingest_many(items, workers=self.workers, on_result=on_result)
        for k, v in counts.items():
            summary.counts[k] = summary.counts.get(k, 0) + v


def _entry(info: zipfile.ZipInfo) -> ArchiveEntry:
    mode = info.external_attr >> 16
    return ArchiveEntry(
        name=info.filename,
        compressed_size=info.compress_size,
        file_size=info.file_size,
        is_dir=info.is_dir(),
        is_symlink=info.create_system == 3 and stat.S_ISLNK(mode),
        encrypted=bool(info.flag_bits & 0x1),
    )
