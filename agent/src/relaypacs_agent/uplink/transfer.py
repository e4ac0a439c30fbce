"""The agent's uplink: manifest first, then tus segments, resumable across anything.

One step of work at a time, always for the most urgent due study (STAT before routine), so a STAT
study preempts a routine backlog at the next segment boundary:

1. no open segment for the study: send the manifest; the hub answers what it lacks. Instances it
   holds are marked uploaded (they never cross the WAN again). Nothing lacking: commit the study.
2. otherwise pack the next segment from what the hub lacks (sized to about 20 s of the measured
   throughput, within the configured bounds), write it to the spool, and upload it with tus.
3. an upload that was interrupted (link down, agent killed, hub restarted) resumes from the offset
   the hub reports on HEAD: a failure costs at most the PATCH in flight. Segment URLs and offsets
   live in SQLite, so a reboot resumes mid-segment.

After each segment the loop starts again at 1: the manifest answer is the proof that the hub
unpacked and verified the segment's instances.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.store.db import Store
from relaypacs_agent.store.uplink import Segment, SegmentPart, UplinkStore
from relaypacs_agent.uplink.client import HubClient, HubRefused, HubUnavailable
from relaypacs_agent.uplink.tus_client import TusClient
from relaypacs_shared.errors import ChecksumMismatch, OffsetConflict, RelayError, UnknownUpload
from relaypacs_shared.segments import SegmentItem, build_segment, should_compress
from relaypacs_shared.tus import MAX_CONCAT_PARTS, UploadSession
from relaypacs_shared.wire import CommitRequest, ManifestEntry

log = structlog.get_logger("relaypacs.agent.uplink")

SEGMENT_SECONDS = 20.0  # a segment is about this much link time: the STAT preemption latency
PATCH_SECONDS = 3.0  # a PATCH is about this much link time: the most a failure costs
# Under heavy loss a connection moves well under 1 KB/s, and a PATCH must finish within its write
# timeout to count: the chunk halves after each failure down to this.
MIN_CHUNK = 8 * 1024
MAX_CHUNK = 8 * 1024 * 1024
PARALLEL_MIN_PART = 64 * 1024  # a segment is split into parallel parts of at least this
# Under loss one TCP connection stalls on retransmissions while others still move: the streams
# of a segment grow with the loss TCP measures (TCP_INFO), from the configured count up to this.
# Under random loss each connection's rate is set by its retransmission timeouts, not by the
# link, so the link stays mostly idle until there are dozens of them (30% loss both ways, 20
# Mbit/s: 19 streams moved 270 KB/s, a tenth of the link).
MAX_STREAMS = 48
# streams = configured x (1 + LOSS_GAIN x loss + LOSS_GAIN2 x loss^2): 3 at 0%, 7 at 5%, 48
# (the cap) at 30%: the square term adds little on a mildly lossy link and much on a hostile one.
LOSS_GAIN = 20.0
LOSS_GAIN2 = 100.0
HEDGE = 4  # before anything is measured (the first segment): this times the configured count
RETRY_CAP = 4.0  # seconds between attempts inside a segment, at most
MAX_SEGMENT_TRIES = 3  # an instance still missing after this many segments is sent alone
# Under loss a segment is cut finer than its streams: a stream that finishes its part takes the
# next one instead of idling while one stalled connection holds the whole segment back.
PARTS_PER_STREAM = 2
# Once no part is left to start, a free stream sends a copy of a part still in flight (a new
# partial upload of the same bytes); the first copy the hub acknowledges whole is the part. At
# 30% loss both ways most parts arrive in a few seconds and a few stall for ten or more on
# retransmission timeouts: the copies cut that tail. At most ``part_copies`` copies of a part at
# once (the agent's setting; 0: none). A part is late (worth a copy) once in flight this many
# times as long as the median part of its segment took so far, and at least
# STRAGGLER_MIN_SECONDS.
STRAGGLER_FACTOR = 2.0
STRAGGLER_MIN_SECONDS = 1.0


def in_window(window: str | None, now: datetime | None = None) -> bool:
    """Is the local time inside ``HH:MM-HH:MM`` (which may wrap midnight)?"""
    if not window:
        return True
    start_s, _, end_s = window.partition("-")
    now = now or datetime.now()
    minutes = now.hour * 60 + now.minute

    def parse(v: str) -> int:
        h, _, m = v.strip().partition(":")
        return int(h) * 60 + int(m or 0)

    start, end = parse(start_s), parse(end_s)
    if start <= end:
        return start <= minutes < end
    return minutes >= start or minutes < end


def streams_for(configured: int, loss: float | None) -> int:
    """Parallel streams for a segment when TCP retransmits ``loss`` of what it sends: one stays
    one (the operator's choice), else from ``configured`` up to MAX_STREAMS as loss grows; HEDGE
    times ``configured`` before anything is measured (on a clean link the extra connections cost
    a handshake each; on a hostile one the first segment is not left to a handful)."""
    if configured <= 1:
        return 1
    if loss is None:  # nothing measured yet (the first segment): hedge against a lossy link
        return min(MAX_STREAMS, configured * HEDGE)
    wanted = round(configured * (1 + LOSS_GAIN * loss + LOSS_GAIN2 * loss * loss))
    return max(configured, min(MAX_STREAMS, wanted))


def parts_for(streams: int, configured: int, length: int) -> int:
    """Parts of a segment sent by ``streams`` connections: one each on a clean link; under loss
    (more streams than configured) PARTS_PER_STREAM each, at least PARALLEL_MIN_PART bytes and at
    most the hub's MAX_CONCAT_PARTS, so a stream that is done takes the next part."""
    if streams <= configured:
        return streams
    count = min(MAX_CONCAT_PARTS, streams * PARTS_PER_STREAM, length // PARALLEL_MIN_PART)
    return max(streams, count)


class Pacer:
    """Token bucket for the bandwidth cap (bytes per second), shared by parallel streams."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self.allowance = bytes_per_second
        self.last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self.allowance = min(self.rate, self.allowance + (now - self.last) * self.rate)
            self.last = now
            self.allowance -= n
            wait = -self.allowance / self.rate if self.allowance < 0 else 0.0
        if wait:
            time.sleep(wait)


class _PartRace:
    """The parts of one segment being sent, some by more than one copy: which are done (first
    copy acknowledged whole wins), how many copies of each are in flight, and the wait for all.
    ``record`` and ``finish`` run their write under the lock, so a losing copy never writes its
    URL or offset over the winner's."""

    def __init__(self, done: list[bool], *, copies: int) -> None:
        self.copies = copies
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self.done = done
        self.inflight = [0] * len(done)
        self.since = [0.0] * len(done)
        self.took: list[float] = []  # how long the parts done so far took, first send to done
        self.copies_sent = 0
        self.copies_won = 0

    def started(self, i: int) -> None:  # under self.lock
        if self.inflight[i]:
            self.copies_sent += 1
        else:
            self.since[i] = time.monotonic()
        self.inflight[i] += 1

    def ended(self, i: int) -> None:
        with self.lock:
            self.inflight[i] -= 1
            self._changed.notify_all()

    def straggler(self) -> int | None:  # under self.lock
        """A part that has been in flight STRAGGLER_FACTOR times longer than the typical part
        of this segment took (fewest copies first, then the oldest), if another copy may
        start. On a clean link parts finish together and none qualifies; under random loss a
        few stall on retransmission timeouts while the rest are long done."""
        if not self.took or self.copies <= 0:
            return None
        typical = sorted(self.took)[len(self.took) // 2]
        late = time.monotonic() - max(STRAGGLER_MIN_SECONDS, STRAGGLER_FACTOR * typical)
        waiting = [
            i
            for i, done in enumerate(self.done)
            if not done and 0 < self.inflight[i] <= self.copies and self.since[i] <= late
        ]
        if not waiting:
            return None
        return min(waiting, key=lambda i: (self.inflight[i], self.since[i]))

    def await_straggler(self, give_up: Callable[[], bool]) -> int | None:  # under self.lock
        """Wait until a part is late (its index) or every part is done (None)."""
        while not all(self.done) and not give_up():
            i = self.straggler()
            if i is not None:
                return i
            self._changed.wait(0.25)
        return None

    def is_done(self, i: int) -> bool:
        return self.done[i]

    def all_done(self) -> bool:
        return all(self.done)

    def record(self, i: int, write: Callable[[], None]) -> None:
        """Run ``write`` unless part ``i`` is done (another copy won: its row stands)."""
        with self.lock:
            if not self.done[i]:
                write()

    def finish(self, i: int, write: Callable[[], None]) -> bool:
        """The first copy of part ``i`` acknowledged whole: write it and say True (once)."""
        with self.lock:
            if self.done[i]:
                return False
            write()
            self.done[i] = True
            self.took.append(time.monotonic() - self.since[i])
            self._changed.notify_all()
            return True

    def copy_won(self) -> None:
        with self.lock:
            self.copies_won += 1

    def wake(self) -> None:
        with self.lock:
            self._changed.notify_all()

    def wait(self, threads: list[threading.Thread]) -> None:
        with self.lock:
            while not all(self.done) and any(t.is_alive() for t in threads):
                self._changed.wait(0.5)


class TransferSender:
    def __init__(
        self,
        store: Store,
        client: HubClient,
        ingestor: Ingestor,
        *,
        spool_dir: Path,
        quiet_period: float,
        retry_max: float,
        status_poll: float,
        held_retry: float = 300.0,
        segment_min: int = 1024 * 1024,
        segment_max: int = 32 * 1024 * 1024,
        bandwidth_limit_kbps: int = 0,
        routine_window: str | None = None,
        streams: int = 3,
        part_copies: int = 3,
    ) -> None:
        self.store = store
        self.uplink = UplinkStore(store)
        self.client = client
        self.tus = TusClient(client.http)
        self.ingestor = ingestor
        self.segment_dir = spool_dir / "segments"
        self.segment_dir.mkdir(parents=True, exist_ok=True)
        self.quiet_period = quiet_period
        self.retry_max = retry_max
        self.held_retry = held_retry
        self.status_poll = status_poll
        self.segment_min = segment_min
        self.segment_max = max(segment_max, segment_min)
        self.routine_window = routine_window
        self.streams = max(1, streams)
        self.part_copies = max(0, part_copies)
        self.pacer = Pacer(bandwidth_limit_kbps * 1000 / 8)
        self.rate_bps = 0.0  # recent wire throughput, bytes/s
        self.chunk = 1024 * 1024
        self._last_poll = 0.0
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.uplink.migrate()

    # -- scheduling ---------------------------------------------------------------------

    def due(self) -> list[Any]:
        studies = self.store.due_studies(self.quiet_period)
        allowed = in_window(self.routine_window)
        return [s for s in studies if s["service_level"] == "stat" or allowed]

    def run_once(self) -> bool:
        """Do one step for the most urgent study; True if there was work."""
        if time.monotonic() - self._last_poll >= self.status_poll:
            self._last_poll = time.monotonic()
            self.poll_committed()
        studies = self.due()
        if not studies:
            return False
        study = studies[0]
        uid = study["study_instance_uid"]
        try:
            self.step(study)
        except (HubUnavailable, ChecksumMismatch, OffsetConflict, UnknownUpload) as exc:
            self._defer(study, exc)
        except RelayError as exc:
            self._defer(study, exc)
        except OSError as exc:
            log.error("uplink_io_error", study_uid=uid, error=str(exc))
            self._defer(study, exc)
        return True

    def _defer(self, study: Any, exc: BaseException) -> None:
        delay = min(self.retry_max, 2.0 ** study["attempts"]) * random.uniform(0.5, 1.0)  # noqa: S311
        self.store.defer_study(study["study_instance_uid"], str(exc), delay)
        log.warning(
            "study_deferred",
            study_uid=study["study_instance_uid"],
            retry_in=round(delay, 1),
            error=str(exc)[:200],
        )

    def step(self, study: Any) -> None:
        uid = study["study_instance_uid"]
        seg = self._open_segment(uid)
        if seg is not None:
            self.upload_segment(seg)
            return
        instances = [
            i for i in self.store.study_instances(uid) if i["state"] in ("spooled", "uploaded")
        ]
        if not instances:
            return
        try:
            answer = self.client.manifest(
                uid,
                study["service_level"],
                [
                    {
                        "sop_instance_uid": i["sop_instance_uid"],
                        "series_instance_uid": i["series_instance_uid"],
                        "sha256": i["sha256"],
                        "size": i["size"],
                    }
                    for i in instances
                ],
            )
        except HubRefused as exc:
            if exc.code == "conflict" and exc.missing:
                for inst in instances:
                    if inst["sop_instance_uid"] in exc.missing:
                        self._refused(inst, exc)
                return
            if exc.code == "study_refused":
                # An admin of the hub refused this study for this facility: each file goes to
                # quarantine with the admin's words, so the counts still add up.
                for inst in instances:
                    self._refused(inst, exc)
                return
            if exc.code == "study_held":
                # Another facility's study: it waits for an admin of the hub. Ask now and then,
                # not at the pace of a network fault; status shows the hub's words meanwhile.
                self.store.defer_study(uid, exc.detail, self.held_retry)
                log.warning("study_held_at_hub", study_uid=uid, retry_in=self.held_retry)
                return
            raise
        missing = set(answer.missing)
        self.uplink.start_stats(uid, answer.missing_bytes)
        for inst in instances:
            if inst["sop_instance_uid"] not in missing and inst["state"] != "uploaded":
                self.store.mark_uploaded(inst["sop_instance_uid"])
        if not missing:
            self._commit(study, instances)
            return
        todo = [i for i in instances if i["sop_instance_uid"] in missing]
        tries = self.uplink.segment_tries(uid)
        stubborn = [i for i in todo if tries.get(i["sop_instance_uid"], 0) >= MAX_SEGMENT_TRIES]
        if stubborn:
            self._send_alone(uid, stubborn)
            return
        seg = self._pack(uid, todo)
        self.upload_segment(seg)

    # -- segments -----------------------------------------------------------------------

    def _open_segment(self, study_uid: str) -> Segment | None:
        seg = self.uplink.open_segment(study_uid)
        if seg is not None and not Path(seg.path).exists():
            self.uplink.update_segment(seg.id, state="abandoned")
            return None
        return seg

    def target_segment_bytes(self) -> int:
        if self.rate_bps <= 0:
            return max(self.segment_min, min(self.segment_max, 4 * 1024 * 1024))
        link = self.rate_bps * self.streams_now()
        return int(max(self.segment_min, min(self.segment_max, link * SEGMENT_SECONDS)))

    def _pack(self, study_uid: str, todo: list[Any]) -> Segment:
        target = self.target_segment_bytes()
        chosen: list[Any] = []
        total = 0
        for inst in todo:
            if chosen and total + inst["size"] > target:
                break
            chosen.append(inst)
            total += inst["size"]
        seg_id = uuid.uuid4().hex
        path = self.segment_dir / f"{seg_id}.seg"
        built = build_segment(
            path,
            segment_id=seg_id,
            study_instance_uid=study_uid,
            items=[
                SegmentItem(
                    path=Path(i["spool_path"]),
                    sop_instance_uid=i["sop_instance_uid"],
                    series_instance_uid=i["series_instance_uid"],
                    sha256=i["sha256"],
                    size=i["size"],
                    compress=should_compress(i["transfer_syntax_uid"]),
                )
                for i in chosen
            ],
        )
        self.uplink.add_segment(
            seg_id,
            study_uid,
            path=str(path),
            length=built.length,
            raw_bytes=built.raw_bytes,
            sha256=built.sha256,
            sop_uids=[i["sop_instance_uid"] for i in chosen],
        )
        log.info(
            "segment_built",
            study_uid=study_uid,
            segment_id=seg_id,
            instances=len(chosen),
            raw_bytes=built.raw_bytes,
            bytes=built.length,
        )
        seg = self.uplink.segment(seg_id)
        assert seg is not None
        return seg

    def upload_segment(self, seg: Segment) -> None:
        """Upload one segment (in parallel parts when it is large enough), then let it go."""
        seg_id, uid, length = seg.id, seg.study_instance_uid, seg.length
        bound = log.bind(study_uid=uid, segment_id=seg_id)
        meta = {
            "kind": "relaypacs-segment",
            "study": uid,
            "segment": seg_id,
            "sha256": seg.sha256,
        }
        streams = min(self.streams_now(), length // PARALLEL_MIN_PART)
        if self.uplink.has_parts(seg_id) or (self.streams > 1 and streams >= 2):
            failures = self._upload_parallel(seg, meta, bound, streams)
        else:
            failures = self._upload_single(seg, meta, bound)
        if failures < 0:
            return  # stopping
        self.uplink.update_segment(seg_id, state="uploaded", offset=length)
        Path(seg.path).unlink(missing_ok=True)
        self.uplink.count_sent(uid, seg.raw_bytes)
        bound.info("segment_uploaded", bytes=length, failures=failures)

    def _upload_single(self, seg: Segment, meta: dict[str, str], bound: Any) -> int:
        seg_id, length = seg.id, seg.length
        url = seg.upload_url
        session = UploadSession(length, 0)
        if url:
            try:
                session.resync(self.tus.head(url))
                bound.info("segment_resumed", offset=session.offset, length=length)
            except UnknownUpload:
                url = None  # expired or lost at the hub: start this segment again
        if not url:
            url = self.tus.create(length, meta)
            self.uplink.update_segment(seg_id, upload_url=url, offset=0, state="uploading")

        def saved(offset: int) -> None:
            self.uplink.update_segment(seg_id, offset=offset)

        return self._send_range(seg, url, 0, session, saved, bound)

    def streams_now(self) -> int:
        """Parallel streams for the next segment: the configured count, more under loss."""
        return streams_for(self.streams, self.tus.loss)

    def _upload_parallel(self, seg: Segment, meta: dict[str, str], bound: Any, streams: int) -> int:
        """tus concatenation: partial uploads sent by ``streams`` connections in parallel, then
        one final that joins them.

        Under random loss one TCP connection's throughput collapses; several in parallel keep
        the link busy, and parts finer than the streams let a fast stream take the next part
        while a slow one retransmits. Each part resumes on its own, like a single upload.
        """
        seg_id, length = seg.id, seg.length
        parts = self.uplink.parts(seg_id)
        if not parts:
            count = parts_for(streams, self.streams, length)
            size = -(-length // count)
            bound.info(
                "segment_parts",
                streams=streams,
                parts=count,
                tcp_loss=round(self.tus.loss or 0.0, 3),
            )
            self.uplink.add_parts(
                seg_id,
                [(i * size, max(0, min(size, length - i * size))) for i in range(count)],
            )
            self.uplink.update_segment(seg_id, state="uploading")
            parts = self.uplink.parts(seg_id)
        errors: list[BaseException] = []
        failures = [0] * len(parts)
        race = _PartRace([p.done for p in parts], copies=self.part_copies)

        # Parts the hub already holds whole (a segment resumed) are not asked about again.
        pending = iter([i for i, p in enumerate(parts) if not p.done])
        yield_to = self._stat_waiting_behind(seg.study_instance_uid)
        yielded: list[bool] = []

        def run() -> None:
            while not errors and not yielded and not self.stop.is_set():
                with race.lock:
                    if yield_to():  # a STAT study came in: it goes before this segment's rest
                        yielded.append(True)
                        return
                    i = next(pending, None)
                    copy = i is None
                    if copy:  # nothing left to start: stay ready to copy a part that stalls
                        i = race.await_straggler(lambda: bool(errors) or self.stop.is_set())
                    if i is None:
                        return
                    race.started(i)
                try:
                    n = self._upload_part(seg, parts[i], meta, bound, race, copy=copy)
                    if not copy:
                        failures[i] = n
                except BaseException as exc:  # reported to the caller below
                    if not race.is_done(i):
                        errors.append(exc)
                        race.wake()
                finally:
                    race.ended(i)

        threads = [
            threading.Thread(target=run, name=f"part-stream-{n}", daemon=True)
            for n in range(min(streams, len(parts)))
        ]
        for t in threads:
            t.start()
        # Every part acknowledged by one of its copies, or every stream ended: the copies still
        # waiting on a stalled connection are left behind (they stop at their next PATCH).
        race.wait(threads)
        if errors and not race.all_done():
            raise errors[0]
        if self.stop.is_set() or min(failures) < 0:
            return -1
        if race.copies_won:
            bound.info("segment_part_copies", won=race.copies_won, sent=race.copies_sent)
        if yielded:
            bound.info("segment_yielded_to_stat")
            return -1  # the segment stays open; its parts are resumed after the STAT study
        urls = self.uplink.part_urls(seg_id)
        try:
            final = self.tus.create_final(urls, meta)
        except UnknownUpload:
            # A part expired or was lost at the hub: start the parts again next time.
            self.uplink.drop_parts(seg_id)
            raise
        self.uplink.update_segment(seg_id, upload_url=final)
        return sum(failures)

    def _stat_waiting_behind(self, study_uid: str) -> Callable[[], bool]:
        """For a routine study's segment: is a STAT study now due (asked as each part starts)?
        A STAT study's own segment never yields."""
        if any(
            s["study_instance_uid"] == study_uid and s["service_level"] == "stat"
            for s in self.due()
        ):
            return lambda: False
        return lambda: any(s["service_level"] == "stat" for s in self.due())

    def _upload_part(
        self,
        seg: Segment,
        part: SegmentPart,
        meta: dict[str, str],
        bound: Any,
        race: _PartRace,
        *,
        copy: bool = False,
    ) -> int:
        """Send one part. The first send of a part keeps its upload URL and offset in SQLite
        (a restart resumes it); a copy (``copy``) is a new partial upload of the same bytes,
        recorded only if the hub acknowledges it whole before the first send."""
        seg_id, idx, start, plen = seg.id, part.idx, part.start, part.length
        url = None if copy else part.upload_url
        session = UploadSession(plen, 0)
        if url:
            try:
                session.resync(self.tus.head(url))
                bound.info("segment_resumed", offset=session.offset, length=plen, part=idx)
            except UnknownUpload:
                url = None
        if not url:
            url = self.tus.create(
                plen, {**meta, "kind": "relaypacs-part", "part": str(idx)}, partial=True
            )
            if not copy:
                created = url
                race.record(
                    idx, lambda: self.uplink.set_part(seg_id, idx, upload_url=created, offset=0)
                )
        this_url = url
        won: list[bool] = []

        def write(offset: int) -> None:
            self.uplink.set_part(seg_id, idx, upload_url=this_url, offset=offset)
            self.uplink.sum_part_offsets(seg_id)  # the segment's offset: its parts' together

        def saved(offset: int) -> None:
            if offset >= plen:
                if race.finish(idx, lambda: write(offset)):
                    won.append(True)
                    if copy:
                        race.copy_won()
            elif not copy:
                race.record(idx, lambda: write(offset))  # not once another copy has won

        failures = self._send_range(
            seg, url, start, session, saved, bound, abandon=lambda: race.is_done(idx)
        )
        if race.is_done(idx) and not won:
            # Another copy got there first: the hub drops this one's bytes (a copy never
            # joined into a final upload would otherwise wait for the hub's expiry).
            with contextlib.suppress(RelayError):
                self.tus.delete(url)
        return failures

    def _send_range(
        self,
        seg: Segment,
        url: str,
        start: int,
        session: UploadSession,
        saved: Any,
        bound: Any,
        abandon: Callable[[], bool] = lambda: False,
    ) -> int:
        """PATCH bytes ``[start + offset, start + length)`` of the segment file until done, or
        until ``abandon()`` says another copy of these bytes got there first.

        Returns the number of failed PATCHes, or -1 if the agent is stopping.
        """
        uid = seg.study_instance_uid
        failures = in_a_row = 0
        with Path(seg.path).open("rb") as f:
            while not session.done:
                if self.stop.is_set():
                    return -1
                if abandon():
                    return failures
                patch = session.next_patch(self.chunk)
                assert patch is not None
                f.seek(start + patch.offset)
                data = f.read(patch.length)
                session.sent(patch)
                started = time.monotonic()
                try:
                    new_offset = self.tus.patch(url, patch.offset, data, self.pacer)
                    session.acknowledged(patch, new_offset)
                except (HubUnavailable, ChecksumMismatch, OffsetConflict) as exc:
                    failures += 1
                    in_a_row += 1
                    self.chunk = max(MIN_CHUNK, self.chunk // 2)
                    self.uplink.count_wire(uid, len(data), self.rate_bps)
                    if in_a_row > 30:
                        raise  # the study is deferred; the offset is safe in SQLite
                    # Short, capped, jittered: a link that comes back is used within seconds.
                    self._pause(min(self.retry_max, RETRY_CAP, 0.25 * 2 ** min(in_a_row, 6)))
                    bound.info("patch_failed", error=str(exc)[:120], chunk=self.chunk)
                    try:
                        session.resync(self.tus.head(url))
                    except HubUnavailable:
                        continue  # still down: the next PATCH attempt asks again
                    saved(session.offset)
                    continue
                in_a_row = 0
                self._learn_rate(len(data) / max(time.monotonic() - started, 1e-3))
                self.uplink.count_wire(uid, len(data), self.rate_bps)
                saved(session.offset)
        return failures

    def _pause(self, seconds: float) -> None:
        self.stop.wait(seconds * random.uniform(0.8, 1.2))  # noqa: S311 - jitter

    def _learn_rate(self, bps: float) -> None:
        # Per-stream rate; segments are sized for all streams together (target_segment_bytes).
        self.rate_bps = bps if self.rate_bps <= 0 else 0.7 * self.rate_bps + 0.3 * bps
        # About PATCH_SECONDS of the measured rate, but at most twice the last chunk: after a
        # failure halved it, one lucky fast PATCH must not jump it back to a size that fails.
        target = min(MAX_CHUNK, self.rate_bps * PATCH_SECONDS, self.chunk * 2)
        self.chunk = int(max(MIN_CHUNK, target))

    # -- commit, refusals, status -------------------------------------------------------

    def _commit(self, study: Any, instances: list[Any]) -> None:
        uid = study["study_instance_uid"]
        keys = study.keys()
        metadata = json.loads(study["metadata"]) if "metadata" in keys and study["metadata"] else {}
        request = CommitRequest(
            service_level="stat" if study["service_level"] == "stat" else "routine",
            instances=[
                ManifestEntry(sop_instance_uid=i["sop_instance_uid"], sha256=i["sha256"])
                for i in instances
            ],
            facility=metadata.get("facility") or None,
            received_at=datetime.fromtimestamp(study["first_received_at"], tz=UTC),
            clinical_history=metadata.get("clinical_history") or None,
            referring_clinician=metadata.get("referring_clinician") or None,
        )
        status = self.client.commit(uid, request)
        if self.store.mark_committed(uid, study["last_instance_at"], status.model_dump_json()):
            log.info("study_committed", study_uid=uid, instances=len(instances))

    def _send_alone(self, uid: str, stubborn: list[Any]) -> None:
        """Instances the hub keeps refusing inside segments: one plain PUT each, for a reason."""
        for inst in stubborn:
            try:
                self.client.put_instance(
                    uid,
                    inst["sop_instance_uid"],
                    Path(inst["spool_path"]),
                    inst["sha256"],
                    inst["size"],
                )
                self.store.mark_uploaded(inst["sop_instance_uid"])
            except HubRefused as exc:
                self._refused(inst, exc)

    def _refused(self, inst: Any, exc: HubRefused) -> None:
        """The hub will never take this instance: keep its bytes in quarantine with the reason."""
        sop = inst["sop_instance_uid"]
        self.store.mark_refused(sop)
        spool = Path(inst["spool_path"])
        copy = spool.with_name(spool.name + ".refused")
        try:
            copy.write_bytes(spool.read_bytes())
            self.ingestor.quarantine(
                copy,
                source="hub",
                reason=f"hub_{exc.code}",
                message=f"the hub refused the instance: {exc.detail}",
                sop_uid=sop,
            )
        except OSError as err:
            log.error("refused_quarantine_failed", error=str(err))
        log.warning("instance_refused_by_hub", sop_uid=sop, code=exc.code)

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
        self.stop = stop
        while not stop.is_set():
            try:
                worked = self.run_once()
            except Exception:
                log.exception("uplink_loop_error")
                worked = False
            if not worked:
                self.wake.wait(interval)
                self.wake.clear()
