"""What the rules may look at, gathered from the study itself.

One instance per series is read from the object store, header only (the first megabyte is
enough for any ordinary header; pixel data is never parsed), and the values of the tags the rule
set tests are collected as strings. Nothing of it is stored or logged: rules can test patient
attributes, and those stay out of the hub's database and logs.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping

import anyio
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs_hub.db.models import Instance
from relaypacs_hub.storage.base import ObjectStore
from relaypacs_shared.routing import StudyFacts

MODALITY = 0x00080060
HEADER_PREFIX_BYTES = 1024 * 1024


def element_values(ds: Dataset, tag: int) -> tuple[str, ...]:
    """The values of one attribute as strings; empty when absent or empty."""
    elem = ds.get(tag)
    if elem is None or elem.value is None:
        return ()
    value = elem.value
    if elem.VR == "SQ":
        return ("<sequence>",) if len(value) else ()
    if isinstance(value, bytes | bytearray):
        return ("<binary>",) if value else ()
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    out = tuple(str(v).strip().rstrip("\x00") for v in items)
    return tuple(v for v in out if v)


def _parse_header(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)


async def read_header(store: ObjectStore, key: str) -> Dataset:
    """The header of one stored instance, reading as little of the object as will do."""
    buf = bytearray()
    chunks = store.iter_bytes(key, HEADER_PREFIX_BYTES)
    try:
        async for chunk in chunks:
            buf += chunk
            break
    finally:
        # Let the store release its file or connection now, not at garbage collection.
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    try:
        return await anyio.to_thread.run_sync(_parse_header, bytes(buf))
    except Exception:
        # A header longer than the prefix (rare): read the whole object.
        data = await store.get_bytes(key)
        return await anyio.to_thread.run_sync(_parse_header, data)


async def series_representatives(session: AsyncSession, study_uid: str) -> list[str]:
    """Object keys of one instance per series of the study."""
    rows = await session.execute(
        select(Instance.series_instance_uid, Instance.object_key)
        .where(Instance.study_instance_uid == study_uid)
        .order_by(Instance.series_instance_uid, Instance.sop_instance_uid)
    )
    seen: dict[str, str] = {}
    for series, key in rows:
        seen.setdefault(series, key)
    return list(seen.values())


async def gather_facts(
    store: ObjectStore,
    keys: Iterable[str],
    *,
    study_uid: str,
    service_level: str,
    facility: str | None,
    tags: set[int],
) -> StudyFacts:
    attributes: dict[int, list[str]] = {}
    modalities: set[str] = set()
    for key in keys:
        ds = await read_header(store, key)
        for tag in tags | {MODALITY}:
            for value in element_values(ds, tag):
                values = attributes.setdefault(tag, [])
                if value not in values:
                    values.append(value)
        modalities.update(v.upper() for v in element_values(ds, MODALITY))
    frozen: Mapping[int, tuple[str, ...]] = {t: tuple(v) for t, v in attributes.items()}
    return StudyFacts(
        study_instance_uid=study_uid,
        service_level=service_level,
        facility=facility,
        modalities=frozenset(modalities),
        attributes=frozen,
    )
