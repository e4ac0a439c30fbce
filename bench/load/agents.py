"""Simulated agents for the load benchmark: many facilities' agents in one asyncio process, each
speaking the real agent <-> hub protocol (manifest, tus segments with checksums, commit, status
polls) with unique studies made from templates.

A template is a study written once by ``relaypacs_dev.generate``; every simulated study replaces
its UIDs (Study, Series, SOP Instance, Frame of Reference, in the file meta too) by fresh ones of
the same length, so each instance is new, valid DICOM that the hub parses and checks like any
other, for the price of a few ``bytes.replace`` calls instead of a DICOM encoder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import struct
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import zstandard

from relaypacs_shared.segments import MAGIC, SegmentEntry, SegmentIndex
from relaypacs_shared.tus import OFFSET_CONTENT_TYPE, TUS_VERSION, encode_metadata, format_checksum

UPLOADS = "/api/v1/uploads"


@dataclass
class Template:
    """One study as files' bytes, and the UIDs to replace in each."""

    kind: str
    instances: list[bytes]
    series_of: list[str]  # series UID of each instance (template values)
    sop_of: list[str]
    shared_uids: list[str]  # study, series, frame of reference UIDs (template values)
    study_uid: str

    @classmethod
    def load(cls, kind: str, files: list[Path]) -> Template:
        instances, series_of, sop_of, shared = [], [], [], set()
        study_uid = ""
        for path in sorted(files):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            instances.append(path.read_bytes())
            series_of.append(str(ds.SeriesInstanceUID))
            sop_of.append(str(ds.SOPInstanceUID))
            study_uid = str(ds.StudyInstanceUID)
            shared.add(study_uid)
            shared.add(str(ds.SeriesInstanceUID))
            if "FrameOfReferenceUID" in ds:
                shared.add(str(ds.FrameOfReferenceUID))
        uids = sorted(shared, key=len, reverse=True)
        return cls(kind, instances, series_of, sop_of, uids, study_uid)

    @property
    def raw_bytes(self) -> int:
        return sum(len(b) for b in self.instances)


def _same_length_uid(old: str, rng: random.Random) -> str:
    """A fresh ``2.25.<digits>`` UID of exactly ``old``'s length (UUID-derived UIDs, PS3.5 B.2)."""
    digits = len(old) - len("2.25.")
    if digits < 2:
        raise ValueError(f"template UID {old} too short to replace")
    return (
        "2.25."
        + str(rng.randint(1, 9))
        + "".join(str(rng.randint(0, 9)) for _ in range(digits - 1))
    )


@dataclass
class Instance:
    sop_instance_uid: str
    series_instance_uid: str
    data: bytes
    sha256: str


@dataclass
class Study:
    kind: str
    study_instance_uid: str
    service_level: str
    instances: list[Instance]

    @property
    def raw_bytes(self) -> int:
        return sum(len(i.data) for i in self.instances)


def make_study(template: Template, rng: random.Random, stat: bool) -> Study:
    mapping = {u: _same_length_uid(u, rng) for u in template.shared_uids}
    out: list[Instance] = []
    for data, series, sop in zip(
        template.instances, template.series_of, template.sop_of, strict=True
    ):
        new_sop = _same_length_uid(sop, rng)
        for old, new in (*mapping.items(), (sop, new_sop)):
            data = data.replace(old.encode(), new.encode())
        out.append(Instance(new_sop, mapping[series], data, hashlib.sha256(data).hexdigest()))
    level = "stat" if stat else "routine"
    return Study(template.kind, mapping[template.study_uid], level, out)


def build_segment(study_uid: str, instances: list[Instance], level: int = 1) -> tuple[bytes, str]:
    """A segment in the agent's format (relaypacs_shared.segments), built in memory."""
    parts = [MAGIC]
    pos = len(MAGIC)
    entries = []
    cctx = zstandard.ZstdCompressor(level=level)
    for inst in instances:
        payload = cctx.compress(inst.data)
        parts.append(payload)
        entries.append(
            SegmentEntry(
                sop_instance_uid=inst.sop_instance_uid,
                series_instance_uid=inst.series_instance_uid,
                sha256=inst.sha256,
                size=len(inst.data),
                encoding="zstd",
                offset=pos,
                length=len(payload),
            )
        )
        pos += len(payload)
    index = (
        SegmentIndex(segment_id=uuid.uuid4().hex, study_instance_uid=study_uid, entries=entries)
        .model_dump_json()
        .encode()
    )
    parts += [index, struct.pack("<I", len(index))]
    body = b"".join(parts)
    digest = hashlib.sha256(body).digest()
    return body + digest, digest.hex()


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    studies: int = 0
    stat_studies: int = 0
    instances: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0
    # (time, raw bytes) of each committed study: the throughput over time
    timeline: list[tuple[float, int]] = field(default_factory=list)
    committed: dict[str, list[str]] = field(default_factory=dict)  # study -> SOP UIDs
    generator_seconds: float = 0.0


@dataclass
class AgentConfig:
    base_url: str
    token: str
    facility: str
    name: str
    think_seconds: float
    link_mbps: float
    segment_bytes: int
    chunk_bytes: int


class SimulatedAgent:
    def __init__(
        self,
        cfg: AgentConfig,
        templates: list[tuple[float, Template]],
        stats: Stats,
        rng: random.Random,
        stat_share: float,
        gen_pool: asyncio.Semaphore,
    ) -> None:
        self.cfg = cfg
        self.templates = templates
        self.stats = stats
        self.rng = rng
        self.stat_share = stat_share
        self.gen_pool = gen_pool
        self.http = httpx.AsyncClient(
            base_url=cfg.base_url,
            headers={"Authorization": f"Bearer {cfg.token}", "User-Agent": "relaypacs-load/1"},
            timeout=httpx.Timeout(120.0, connect=10.0),
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, op: str, method: str, url: str, **kw: object) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            resp = await self.http.request(method, url, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.stats.errors[f"{op}: {type(exc).__name__}"] += 1
            return None
        self.stats.latency[op].append(time.perf_counter() - t0)
        if resp.status_code >= 400:
            self.stats.errors[f"{op}: {resp.status_code}"] += 1
        return resp

    async def _pace(self, n: int) -> None:
        if self.cfg.link_mbps > 0:
            await asyncio.sleep(n * 8 / (self.cfg.link_mbps * 1e6))

    def _pick(self) -> Template:
        r = self.rng.random()
        for share, template in self.templates:
            if r < share:
                return template
            r -= share
        return self.templates[-1][1]

    async def run(self, deadline: float) -> None:
        # Agents start spread out, as real facilities do.
        await asyncio.sleep(self.rng.uniform(0, self.cfg.think_seconds))
        while time.monotonic() < deadline:
            template = self._pick()
            async with self.gen_pool:
                t0 = time.process_time()
                rng = random.Random(self.rng.getrandbits(64))
                stat = self.rng.random() < self.stat_share
                study = await asyncio.to_thread(make_study, template, rng, stat)
                self.stats.generator_seconds += time.process_time() - t0
            await self.send(study, deadline + 120)
            pause = self.rng.expovariate(1 / self.cfg.think_seconds)
            await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    async def send(self, study: Study, give_up: float) -> None:
        uid = study.study_instance_uid
        while time.monotonic() < give_up:
            resp = await self._call(
                "manifest",
                "POST",
                f"/api/v1/studies/{uid}/manifest",
                json={
                    "service_level": study.service_level,
                    "instances": [
                        {
                            "sop_instance_uid": i.sop_instance_uid,
                            "series_instance_uid": i.series_instance_uid,
                            "sha256": i.sha256,
                            "size": len(i.data),
                        }
                        for i in study.instances
                    ],
                },
            )
            if resp is None or resp.status_code >= 500 or resp.status_code == 429:
                await asyncio.sleep(2)
                continue
            if resp.status_code != 200:
                return  # refused: counted in errors
            missing = set(resp.json()["missing"])
            todo = [i for i in study.instances if i.sop_instance_uid in missing]
            if todo and not await self._send_segments(uid, todo, give_up):
                continue
            resp = await self._call(
                "commit",
                "POST",
                f"/api/v1/studies/{uid}/commit",
                json={
                    "service_level": study.service_level,
                    "facility": self.cfg.facility,
                    "instances": [
                        {"sop_instance_uid": i.sop_instance_uid, "sha256": i.sha256}
                        for i in study.instances
                    ],
                },
            )
            if resp is None or resp.status_code >= 500 or resp.status_code == 409:
                await asyncio.sleep(2)
                continue
            if resp.status_code != 200:
                return
            self.stats.studies += 1
            self.stats.stat_studies += study.service_level == "stat"
            self.stats.instances += len(study.instances)
            self.stats.raw_bytes += study.raw_bytes
            self.stats.timeline.append((time.monotonic(), study.raw_bytes))
            self.stats.committed[uid] = [i.sop_instance_uid for i in study.instances]
            # The agent asks for the delivery state of a committed study now and then.
            await self._call("status", "GET", f"/api/v1/studies/{uid}")
            return

    async def _send_segments(self, uid: str, todo: list[Instance], give_up: float) -> bool:
        batch: list[Instance] = []
        size = 0
        batches = []
        for inst in todo:
            batch.append(inst)
            size += len(inst.data)
            if size >= self.cfg.segment_bytes:
                batches.append(batch)
                batch, size = [], 0
        if batch:
            batches.append(batch)
        for batch in batches:
            async with self.gen_pool:
                t0 = time.process_time()
                body, sha = await asyncio.to_thread(build_segment, uid, batch)
                self.stats.generator_seconds += time.process_time() - t0
            if not await self._upload(uid, body, sha, give_up):
                return False
        return True

    async def _upload(self, uid: str, body: bytes, sha: str, give_up: float) -> bool:
        meta = {
            "kind": "relaypacs-segment",
            "study": uid,
            "segment": uuid.uuid4().hex,
            "sha256": sha,
        }
        tus = {"Tus-Resumable": TUS_VERSION}
        resp = await self._call(
            "create",
            "POST",
            UPLOADS,
            headers={
                **tus,
                "Upload-Length": str(len(body)),
                "Upload-Metadata": encode_metadata(meta),
            },
        )
        if resp is None or resp.status_code != 201:
            await asyncio.sleep(2)
            return False
        url = resp.headers["location"]
        url = url if url.startswith("/") else httpx.URL(url).path
        offset = 0
        while offset < len(body):
            if time.monotonic() > give_up:
                return False
            chunk = body[offset : offset + self.cfg.chunk_bytes]
            await self._pace(len(chunk))
            resp = await self._call(
                "patch",
                "PATCH",
                url,
                content=chunk,
                headers={
                    **tus,
                    "Content-Type": OFFSET_CONTENT_TYPE,
                    "Upload-Offset": str(offset),
                    "Upload-Checksum": format_checksum("sha256", chunk),
                },
            )
            if resp is not None and resp.status_code == 204:
                self.stats.wire_bytes += len(chunk)
                offset = int(resp.headers["upload-offset"])
                continue
            # Anything else: ask the hub where the upload stands and go on from there.
            await asyncio.sleep(1)
            head = await self._call("head", "HEAD", url, headers=tus)
            if head is None or head.status_code >= 500:
                continue
            if head.status_code != 200:
                return False  # the upload is gone: start the study over from the manifest
            offset = int(head.headers["upload-offset"])
        return True


def summary_json(stats: Stats) -> str:
    return json.dumps({"studies": stats.studies, "errors": dict(stats.errors)})
