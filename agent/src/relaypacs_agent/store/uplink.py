"""The uplink's rows in the catalogue: segments (instances packed into one file, sent as one tus
upload or as parallel parts), their parts, and each study's transfer stats.

The flow (manifest, packing, parts raced and copied, resume after a crash) is
:mod:`relaypacs_agent.uplink.transfer`'s; this module reads and writes the rows, each write in a
transaction of its own on the store's single writer, as the sender calls them: an upload URL or
offset is saved once the hub has acknowledged it, so a restart resumes from it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

from relaypacs_agent.store.db import Store
from relaypacs_agent.store.schema import UPLINK_MIGRATIONS

_SEGMENT_COLUMNS = (
    "id, study_instance_uid, path, length, raw_bytes, sha256, sop_uids, upload_url, offset, "
    "state, attempts, resent_bytes, created_at, updated_at"
)
_PART_COLUMNS = "segment_id, idx, start, length, upload_url, offset"


@dataclass(frozen=True)
class Segment:
    id: str
    study_instance_uid: str
    path: str  # the segment file in the spool
    length: int  # bytes of the file (after compression)
    raw_bytes: int  # bytes of its instances as held
    sha256: str
    sop_uids: tuple[str, ...]
    upload_url: str | None  # the single upload's, or the final upload joining the parts
    offset: int
    state: str  # built | uploading | uploaded | abandoned
    attempts: int
    resent_bytes: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class SegmentPart:
    segment_id: str
    idx: int
    start: int
    length: int
    upload_url: str | None  # the part's partial upload (its first send's, or the winning copy's)
    offset: int  # bytes the hub acknowledged

    @property
    def done(self) -> bool:
        """The hub acknowledged every byte of this part (the offset is saved only after that)."""
        return bool(self.upload_url) and self.offset >= self.length


@dataclass(frozen=True)
class TransferProgress:
    """One study's uplink progress (``relaypacs-agent status``, the LAN app): bytes, rate, ETA."""

    bytes_to_send: int
    bytes_sent: int
    percent: float
    wire_bytes: int
    rate_bytes_per_s: int
    eta_seconds: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _segment(row: sqlite3.Row) -> Segment:
    values = dict(zip(row.keys(), row, strict=True))
    values["sop_uids"] = tuple(json.loads(values["sop_uids"]))
    return Segment(**values)


def _part(row: sqlite3.Row) -> SegmentPart:
    return SegmentPart(*row)


def transfer_progress(conn: sqlite3.Connection, study_uid: str) -> TransferProgress | None:
    """Progress of one study's uplink read on ``conn`` (the store's, under its lock, or a
    read-only one of its own), or None before its first manifest answer."""
    try:
        row = conn.execute(
            "SELECT total_bytes, sent_bytes, wire_bytes, rate_bps, started_at, updated_at "
            "FROM transfer_stats WHERE study_instance_uid = ?",
            (study_uid,),
        ).fetchone()
        partial = conn.execute(
            "SELECT COALESCE(SUM(CAST(offset AS REAL) / length * raw_bytes), 0) FROM segments "
            "WHERE study_instance_uid = ? AND state = 'uploading' AND length > 0",
            (study_uid,),
        ).fetchone()[0]
    except sqlite3.OperationalError:
        return None  # the uplink has not created its tables yet
    if row is None:
        return None
    total, sent, wire, rate, _started, _updated = row
    done = min(total, sent + int(partial))
    remaining = max(total - done, 0)
    # rate is measured on the wire (compressed); scale the ETA by the compression seen so far.
    ratio = (wire / sent) if sent else 1.0
    eta = (remaining * ratio / rate) if rate > 0 and remaining else (0.0 if not remaining else None)
    return TransferProgress(
        bytes_to_send=total,
        bytes_sent=done,
        percent=round(100.0 * done / total, 1) if total else 100.0,
        wire_bytes=wire,
        rate_bytes_per_s=round(rate),
        eta_seconds=None if eta is None else round(eta),
    )


class UplinkStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def migrate(self) -> list[str]:
        """Create the uplink's tables (applied by the sender at start), if not yet there."""
        return self.store.migrate(UPLINK_MIGRATIONS)

    # -- segments ---------------------------------------------------------------------------

    def open_segment(self, study_uid: str) -> Segment | None:
        """The study's oldest segment still to upload (built or uploading), if any."""
        rows = self.store.query(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE study_instance_uid = ? "  # noqa: S608 - constant columns
            "AND state IN ('built', 'uploading') ORDER BY created_at LIMIT 1",
            (study_uid,),
        )
        return _segment(rows[0]) if rows else None

    def segment(self, seg_id: str) -> Segment | None:
        rows = self.store.query(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE id = ?",  # noqa: S608 - constant columns
            (seg_id,),
        )
        return _segment(rows[0]) if rows else None

    def add_segment(
        self,
        seg_id: str,
        study_uid: str,
        *,
        path: str,
        length: int,
        raw_bytes: int,
        sha256: str,
        sop_uids: list[str],
    ) -> None:
        """Keep a segment just built (state ``built``)."""
        now = time.time()
        with self.store.tx() as conn:
            conn.execute(
                """INSERT INTO segments (id, study_instance_uid, path, length, raw_bytes, sha256,
                   sop_uids, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)""",
                (
                    seg_id,
                    study_uid,
                    path,
                    length,
                    raw_bytes,
                    sha256,
                    json.dumps(sop_uids),
                    now,
                    now,
                ),
            )

    def update_segment(
        self,
        seg_id: str,
        *,
        state: str | None = None,
        upload_url: str | None = None,
        offset: int | None = None,
    ) -> None:
        """Set the given fields of a segment (those left None stay) and its ``updated_at``."""
        given = {"upload_url": upload_url, "offset": offset, "state": state}
        fields = {k: v for k, v in given.items() if v is not None}
        cols = "".join(f"{k} = ?, " for k in fields)
        with self.store.tx() as conn:
            conn.execute(
                f"UPDATE segments SET {cols}updated_at = ? WHERE id = ?",  # noqa: S608 - constant columns
                (*fields.values(), time.time(), seg_id),
            )

    def segment_tries(self, study_uid: str) -> dict[str, int]:
        """How many of the study's uploaded segments carried each instance (SOP Instance UID)."""
        counts: dict[str, int] = {}
        for row in self.store.query(
            "SELECT sop_uids FROM segments WHERE study_instance_uid = ? AND state = 'uploaded'",
            (study_uid,),
        ):
            for sop in json.loads(row["sop_uids"]):
                counts[sop] = counts.get(sop, 0) + 1
        return counts

    # -- parts ------------------------------------------------------------------------------

    def has_parts(self, seg_id: str) -> bool:
        return bool(
            self.store.query("SELECT 1 FROM segment_parts WHERE segment_id = ? LIMIT 1", (seg_id,))
        )

    def parts(self, seg_id: str) -> list[SegmentPart]:
        """The segment's parts, in order."""
        rows = self.store.query(
            f"SELECT {_PART_COLUMNS} FROM segment_parts WHERE segment_id = ? ORDER BY idx",  # noqa: S608 - constant columns
            (seg_id,),
        )
        return [_part(r) for r in rows]

    def add_parts(self, seg_id: str, spans: list[tuple[int, int]]) -> None:
        """Cut the segment into parts ``(start, length)``, numbered in order, in one transaction."""
        with self.store.tx() as conn:
            for i, (start, length) in enumerate(spans):
                conn.execute(
                    "INSERT INTO segment_parts (segment_id, idx, start, length) VALUES (?,?,?,?)",
                    (seg_id, i, start, length),
                )

    def set_part(self, seg_id: str, idx: int, *, upload_url: str, offset: int) -> None:
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE segment_parts SET upload_url = ?, offset = ? "
                "WHERE segment_id = ? AND idx = ?",
                (upload_url, offset, seg_id, idx),
            )

    def sum_part_offsets(self, seg_id: str) -> None:
        """The segment's offset becomes its parts' together (the progress of a parallel send)."""
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE segments SET offset = (SELECT COALESCE(SUM(offset), 0) FROM "
                "segment_parts WHERE segment_id = ?) WHERE id = ?",
                (seg_id, seg_id),
            )

    def part_urls(self, seg_id: str) -> list[str]:
        """The parts' upload URLs in order (what the final upload joins, once every part is
        done: each has its URL by then)."""
        return [cast(str, p.upload_url) for p in self.parts(seg_id)]

    def drop_parts(self, seg_id: str) -> None:
        """Forget the segment's parts (one expired or was lost at the hub): cut them again."""
        with self.store.tx() as conn:
            conn.execute("DELETE FROM segment_parts WHERE segment_id = ?", (seg_id,))

    # -- transfer stats ---------------------------------------------------------------------

    def start_stats(self, study_uid: str, missing_bytes: int) -> None:
        """A manifest answer: the hub lacks ``missing_bytes`` of the study's instances."""
        now = time.time()
        with self.store.tx() as conn:
            conn.execute(
                """INSERT INTO transfer_stats (study_instance_uid, total_bytes, started_at,
                   updated_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (study_instance_uid) DO UPDATE SET
                     total_bytes = MAX(total_bytes, transfer_stats.sent_bytes + ?),
                     updated_at = ?""",
                (study_uid, missing_bytes, now, now, missing_bytes, now),
            )

    def count_wire(self, study_uid: str, n: int, rate_bps: float) -> None:
        """``n`` more bytes put on the link; ``rate_bps`` the wire throughput measured now."""
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE transfer_stats SET wire_bytes = wire_bytes + ?, rate_bps = ?, "
                "updated_at = ? WHERE study_instance_uid = ?",
                (n, rate_bps, time.time(), study_uid),
            )

    def count_sent(self, study_uid: str, raw_bytes: int) -> None:
        """A segment of ``raw_bytes`` (its instances as held) was uploaded whole."""
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE transfer_stats SET sent_bytes = sent_bytes + ?, updated_at = ? "
                "WHERE study_instance_uid = ?",
                (raw_bytes, time.time(), study_uid),
            )

    def progress(self, study_uid: str) -> TransferProgress | None:
        with self.store._lock:
            return transfer_progress(self.store.conn, study_uid)
