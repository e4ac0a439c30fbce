"""Folder destination: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

Each file is written to a temporary name, fsynced and renamed, so a reader of the folder (a PACS
import job, a person) never sees half a file. Bytes are copied in chunks from the object store,
never a whole instance in memory. Confirmation re-reads what is on disk.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import anyio

from relaypacs_hub.forwarding.base import (
    BatchCallback,
    DeliveryResult,
    OutgoingInstance,
    batch_callback,
)
from relaypacs_hub.forwarding.config import FolderDestinationConfig
from relaypacs_shared.errors import DestinationError, TransientDestinationError

BATCH_INSTANCES = 20


class FolderDestination:
    def __init__(self, config: FolderDestinationConfig) -> None:
        self.name = config.name
        self.root = config.path

    def _path(self, study: str, series: str, sop: str) -> Path:
        return self.root / study / series / f"{sop}.dcm"

    async def deliver(
        self,
        study_instance_uid: str,
        instances: Sequence[OutgoingInstance],
        on_batch: BatchCallback | None = None,
    ) -> DeliveryResult:
        go_on = batch_callback(on_batch)
        result = DeliveryResult()
        for start in range(0, len(instances), BATCH_INSTANCES):
            batch = DeliveryResult()
            for inst in instances[start : start + BATCH_INSTANCES]:
                dest = self._path(
                    study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid
                )
                try:
                    await _write_atomic(dest, inst)
                except OSError as exc:
                    raise TransientDestinationError(f"cannot write to {self.root}: {exc}") from exc
                batch.delivered.add(inst.sop_instance_uid)
            result.merge(batch)
            more = start + BATCH_INSTANCES < len(instances)
            if not await go_on(batch) and more:
                result.stopped = True
                break
        return result

    async def confirm(self, study_instance_uid: str, sop_instance_uids: Sequence[str]) -> set[str]:
        study_dir = self.root / study_instance_uid

        def _scan() -> set[str]:
            if not study_dir.is_dir():
                return set()
            present = {p.stem for p in study_dir.glob("*/*.dcm")}
            return present & set(sop_instance_uids)

        return await anyio.to_thread.run_sync(_scan)

    async def probe(self) -> str:
        def _check() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / f".relaypacs-probe-{uuid.uuid4().hex}"
            marker.write_bytes(b"")
            marker.unlink()

        try:
            await anyio.to_thread.run_sync(_check)
        except OSError as exc:
            raise DestinationError(f"folder {self.root} is not writable: {exc}") from exc
        return f"folder {self.root} is writable"

    async def aclose(self) -> None:
        return None


async def _write_atomic(dest: Path, inst: OutgoingInstance) -> None:
    await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        async with await anyio.open_file(tmp, "wb") as f:
            if inst.stream is not None:
                async for chunk in inst.stream():
                    await f.write(chunk)
            else:
                await f.write(await inst.read())
            await f.flush()
            await anyio.to_thread.run_sync(os.fsync, f.wrapped.fileno())
        await anyio.to_thread.run_sync(os.replace, tmp, dest)
    except BaseException:
        await anyio.Path(tmp).unlink(missing_ok=True)
        raise
