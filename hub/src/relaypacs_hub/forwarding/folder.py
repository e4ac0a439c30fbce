"""Folder destination: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

Each file is written to a temporary name, fsynced and renamed, so a reader of the folder (a PACS
import job, a person) never sees half a file. Confirmation re-reads what is on disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anyio

from relaypacs_hub.forwarding.base import DeliveryResult, OutgoingInstance
from relaypacs_hub.forwarding.config import FolderDestinationConfig
from relaypacs_shared.errors import TransientDestinationError


class FolderDestination:
    def __init__(self, config: FolderDestinationConfig) -> None:
        self.name = config.name
        self.root = config.path

    def _path(self, study: str, series: str, sop: str) -> Path:
        return self.root / study / series / f"{sop}.dcm"

    async def deliver(
        self, study_instance_uid: str, instances: Sequence[OutgoingInstance]
    ) -> DeliveryResult:
        result = DeliveryResult()
        for inst in instances:
            data = await inst.read()
            dest = self._path(study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid)
            try:
                await anyio.to_thread.run_sync(_write_atomic, dest, data)
            except OSError as exc:
                raise TransientDestinationError(f"cannot write to {self.root}: {exc}") from exc
            result.delivered.add(inst.sop_instance_uid)
        return result

    async def confirm(self, study_instance_uid: str, sop_instance_uids: Sequence[str]) -> set[str]:
        study_dir = self.root / study_instance_uid

        def _scan() -> set[str]:
            if not study_dir.is_dir():
                return set()
            present = {p.stem for p in study_dir.glob("*/*.dcm")}
            return present & set(sop_instance_uids)

        return await anyio.to_thread.run_sync(_scan)

    async def aclose(self) -> None:
        return None


def _write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
