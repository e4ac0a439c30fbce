"""A person's decisions on quarantined files: look, release (re-validated), delete.

Nothing in quarantine is deleted unless a person asks. ``release`` re-validates the file with
the agent's current limits and takes it in if it passes; a conflict (same SOP Instance UID,
other bytes) is released only with ``replace=True``, and only while the held instance has not
been sent: the held bytes then go to quarantine themselves (reason ``replaced``), so both
versions stay until a person deletes one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaypacs_agent.ingest.files import place_in_spool, stage_copy
from relaypacs_agent.ingest.pipeline import Ingestor, Source
from relaypacs_agent.store.db import Row
from relaypacs_shared.dicom import precheck_file, validate_file
from relaypacs_shared.errors import DicomValidationError
from relaypacs_shared.refusals import explain, words  # one wording table (CLI, LAN API, PWA)


class ReleaseRefused(Exception):
    """The file cannot be released; the message says why and what to do."""


@dataclass(frozen=True)
class Released:
    outcome: str  # accepted | duplicate | resent | replaced
    sop_instance_uid: str
    study_instance_uid: str


def entry_dict(row: Row) -> dict[str, Any]:
    d = {k: row[k] for k in row.keys()}  # noqa: SIM118 - a Row is not a mapping
    d.update(words(row["reason"]))
    d["exists"] = Path(row["path"]).exists()
    return d


def _open_entry(ingestor: Ingestor, entry_id: int) -> tuple[Row, Path]:
    row = ingestor.store.quarantine_entry(entry_id)
    if row is None:
        raise ReleaseRefused(f"no quarantine entry {entry_id}")
    if row["resolution"]:
        raise ReleaseRefused(f"entry {entry_id} was already {row['resolution']}")
    path = Path(row["path"])
    if not path.exists():
        raise ReleaseRefused(f"the quarantined file {path} is missing")
    return row, path


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".reason.json").unlink(missing_ok=True)


def release(ingestor: Ingestor, entry_id: int, *, replace: bool = False) -> Released:
    _row, path = _open_entry(ingestor, entry_id)
    try:
        precheck_file(path, max_bytes=ingestor.max_instance_bytes)
        info = validate_file(
            path, max_bytes=ingestor.max_instance_bytes, max_depth=ingestor.max_sequence_depth
        )
    except DicomValidationError as exc:
        raise ReleaseRefused(
            f"still refused: {explain(exc.reason)} ({exc.reason}): {exc.message}"
        ) from exc
    store = ingestor.store
    held = store.get_instance(info.sop_instance_uid)
    if held is None:
        result = ingestor.ingest(path, Source(kind="released", keep_original=True))
        if result.outcome not in ("accepted", "duplicate", "replayed"):
            raise ReleaseRefused(f"not taken in: {result.outcome} {result.reason}")
        outcome = "accepted"
    elif held["sha256"] == info.sha256:
        outcome = (
            "resent"
            if store.reopen_refused(info.sop_instance_uid, info.study_instance_uid)
            else "duplicate"
        )
    else:
        if not replace:
            raise ReleaseRefused(
                f"an instance with this SOP Instance UID and other content is held (state "
                f"{held['state']}); release with --replace to keep this version instead"
            )
        if held["state"] not in ("spooled", "refused"):
            raise ReleaseRefused(
                "the held version was already sent to the hub, which keeps the first bytes it "
                "received for a UID; resolve it at the hub or the PACS"
            )
        staged, sha = stage_copy(path, ingestor.staging_dir)
        new_spool = place_in_spool(staged, ingestor.spool_dir, sha)
        old_spool = Path(held["spool_path"])
        if not store.replace_instance(info, spool_path=new_spool, source="released"):
            raise ReleaseRefused("the held version was sent meanwhile; nothing changed")
        if old_spool.exists() and old_spool != new_spool:
            ingestor.quarantine(
                old_spool,
                source="released",
                reason="replaced",
                message=f"replaced by quarantine entry {entry_id} on a person's decision",
                sha256=held["sha256"],
                sop_uid=info.sop_instance_uid,
            )
        outcome = "replaced"
    store.resolve_quarantine(entry_id, "released", outcome)
    _remove(path)
    return Released(outcome, info.sop_instance_uid, info.study_instance_uid)


def delete(ingestor: Ingestor, entry_id: int) -> dict[str, Any]:
    row = ingestor.store.quarantine_entry(entry_id)
    if row is None:
        raise ReleaseRefused(f"no quarantine entry {entry_id}")
    if row["resolution"]:
        raise ReleaseRefused(f"entry {entry_id} was already {row['resolution']}")
    _remove(Path(row["path"]))
    ingestor.store.resolve_quarantine(entry_id, "deleted", "deleted on a person's request")
    return entry_dict(row)


def sidecar(row: Row) -> dict[str, Any]:
    path = Path(row["path"])
    side = path.with_name(path.name + ".reason.json")
    try:
        data: dict[str, Any] = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data
