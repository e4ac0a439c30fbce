"""DIMSE destination: C-STORE with pynetdicom, confirmed by C-FIND where the archive offers it.

One association per delivery attempt. Presentation contexts are proposed per SOP Class of the
study (PS3.8 section 9.3.2.2): each instance's own transfer syntax in a context of its own, and,
for uncompressed instances, one more context offering Explicit and Implicit VR Little Endian, so
an archive that accepts only one of them still gets the instance (pynetdicom re-encodes between
the two little-endian syntaxes; compressed pixel data is never transcoded). An instance whose
SOP Class and transfer syntax the archive refused is a failure with that reason, not a retry.

C-STORE statuses (PS3.4 B.2.3 and PS3.7 C): 0x0000 success; 0xB000, 0xB006, 0xB007 warnings
(stored); anything else is a failure described in plain words. An association that is aborted or
times out mid-study raises ``TransientDestinationError``; what was acknowledged before counts.

Confirmation (``confirm = "c-find"``): a Study Root C-FIND at SERIES level for the study, then at
IMAGE level per series (hierarchical queries, PS3.4 C.4.1.3.1), collecting SOP Instance UIDs.
With ``confirm = "c-store"`` (storescp and other archives without C-FIND) the C-STORE
acknowledgements are the confirmation, and ``confirm`` returns ``None``.

pynetdicom is blocking: every network step runs in a worker thread, one at a time per delivery.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from relaypacs_hub.forwarding.base import (
    BatchCallback,
    DeliveryResult,
    OutgoingInstance,
    batch_callback,
)
from relaypacs_hub.forwarding.config import DimseDestinationConfig
from relaypacs_shared.dicom_status import SUCCESS, WARNING_STATUSES, describe_failure_reason
from relaypacs_shared.errors import DestinationError, TransientDestinationError

log = structlog.get_logger(__name__)
# pynetdicom logs every PDU at INFO and a refused connection at ERROR on each retry; the
# destination's own errors (and the job's last_error) say what matters.
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

DUPLICATE_SOP_INSTANCE = 0x0111  # not a C-STORE status, but some archives answer it so
_PENDING = frozenset({0xFF00, 0xFF01})
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255


def proposed_contexts(
    instances: Sequence[OutgoingInstance], mode: str
) -> list[tuple[str, list[str]]]:
    """(SOP Class, [transfer syntaxes]) pairs to propose for these instances, in a stable order."""
    contexts: dict[tuple[str, tuple[str, ...]], None] = {}
    for inst in instances:
        ts = UID(inst.transfer_syntax_uid)
        contexts[(inst.sop_class_uid, (str(ts),))] = None
        if mode == "original-or-uncompressed" and not ts.is_compressed and ts.is_little_endian:
            contexts[(inst.sop_class_uid, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))] = None
    out = [(sop, list(ts)) for sop, ts in contexts]
    if len(out) > MAX_CONTEXTS:
        raise DestinationError(
            f"the study needs {len(out)} presentation contexts, more than the {MAX_CONTEXTS}"
            " one association can carry"
        )
    return out


def describe_store_status(status: int) -> str:
    if status == 0x0122:
        return "SOP class not supported by the archive (0x0122)"
    return describe_failure_reason(status)


class DimseDestination:
    def __init__(self, config: DimseDestinationConfig) -> None:
        self.name = config.name
        self.config = config

    # -- association --------------------------------------------------------------------------

    def _ae(self, contexts: list[tuple[str, list[str]]]) -> AE:
        ae = AE(ae_title=self.config.calling_aet)
        timeout = self.config.timeout_seconds
        ae.acse_timeout = timeout
        ae.dimse_timeout = timeout
        ae.network_timeout = timeout
        ae.connection_timeout = timeout
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
        return ae

    def _associate(self, contexts: list[tuple[str, list[str]]]) -> Association:
        ae = self._ae(contexts)
        where = f"{self.config.called_aet}@{self.config.host}:{self.config.port}"
        assoc = ae.associate(
            self.config.host,
            self.config.port,
            ae_title=self.config.called_aet,
            max_pdu=self.config.max_pdu,
        )
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            result = getattr(getattr(assoc.acceptor, "primitive", None), "result", None)
            error = TransientDestinationError if result == 0x02 else DestinationError
            raise error(f"association with {where} rejected (A-ASSOCIATE-RJ result {result})")
        raise TransientDestinationError(
            f"no association with {where}: connection refused, aborted or timed out"
        )

    async def _open(self, contexts: list[tuple[str, list[str]]]) -> Association:
        return await anyio.to_thread.run_sync(self._associate, contexts)

    @staticmethod
    async def _release(assoc: Association) -> None:
        if assoc.is_established:
            await anyio.to_thread.run_sync(assoc.release)

    # -- C-STORE ------------------------------------------------------------------------------

    def _store(self, assoc: Association, data: bytes) -> tuple[int | None, str | None]:
        ds = pydicom.dcmread(io.BytesIO(data))
        try:
            rsp = assoc.send_c_store(ds)
        except ValueError as exc:
            # pynetdicom: no presentation context for this SOP Class and transfer syntax was
            # accepted by the archive. Sending again will not change its mind.
            return None, f"refused at negotiation: {exc}"
        status = rsp.get("Status") if rsp else None
        return (int(status) if status is not None else None), None

    async def deliver(
        self,
        study_instance_uid: str,
        instances: Sequence[OutgoingInstance],
        on_batch: BatchCallback | None = None,
    ) -> DeliveryResult:
        go_on = batch_callback(on_batch)
        result = DeliveryResult()
        if not instances:
            return result
        assoc = await self._open(proposed_contexts(instances, self.config.transfer_syntaxes))
        size = self.config.batch_instances
        try:
            for start in range(0, len(instances), size):
                batch = DeliveryResult()
                for inst in instances[start : start + size]:
                    # One instance in memory at a time.
                    data = await inst.read()
                    status, refused = await anyio.to_thread.run_sync(self._store, assoc, data)
                    del data
                    uid = inst.sop_instance_uid
                    if refused is not None:
                        batch.failed[uid] = refused
                    elif status is None:
                        result.merge(batch)
                        await go_on(batch)  # keep what was acknowledged before the abort
                        raise TransientDestinationError(
                            f"association with {self.config.called_aet} aborted or timed out"
                            f" after {len(result.delivered)} instance(s) were stored"
                        )
                    elif status in (SUCCESS, DUPLICATE_SOP_INSTANCE) or status in WARNING_STATUSES:
                        batch.delivered.add(uid)
                    else:
                        batch.failed[uid] = describe_store_status(status)
                result.merge(batch)
                more = start + size < len(instances)
                if not await go_on(batch) and more:
                    result.stopped = True
                    break
        finally:
            await self._release(assoc)
        if result.failed:
            log.warning(
                "c_store_refused",
                destination=self.name,
                study_uid=study_instance_uid,
                refused=len(result.failed),
                reasons=sorted(set(result.failed.values()))[:5],
            )
        return result

    # -- C-FIND -------------------------------------------------------------------------------

    def _find(self, assoc: Association, query: Dataset) -> Iterator[Dataset]:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise TransientDestinationError("C-FIND aborted or timed out")
            if code in _PENDING:
                if identifier is not None:
                    yield identifier
            elif code == SUCCESS:
                return
            else:
                raise DestinationError(f"C-FIND failed: {describe_failure_reason(code)}")

    def _held(self, study_instance_uid: str) -> set[str]:
        contexts: list[tuple[str, list[str]]] = [
            (StudyRootQueryRetrieveInformationModelFind, [ExplicitVRLittleEndian])
        ]
        assoc = self._associate(contexts)
        held: set[str] = set()
        try:
            series = Dataset()
            series.QueryRetrieveLevel = "SERIES"
            series.StudyInstanceUID = study_instance_uid
            series.SeriesInstanceUID = ""
            series_uids = [
                str(d.SeriesInstanceUID)
                for d in self._find(assoc, series)
                if d.get("SeriesInstanceUID")
            ]
            for series_uid in series_uids:
                image = Dataset()
                image.QueryRetrieveLevel = "IMAGE"
                image.StudyInstanceUID = study_instance_uid
                image.SeriesInstanceUID = series_uid
                image.SOPInstanceUID = ""
                held.update(
                    str(d.SOPInstanceUID)
                    for d in self._find(assoc, image)
                    if d.get("SOPInstanceUID")
                )
        finally:
            if assoc.is_established:
                assoc.release()
        return held

    async def confirm(
        self, study_instance_uid: str, sop_instance_uids: Sequence[str]
    ) -> set[str] | None:
        if self.config.confirm != "c-find":
            return None
        held = await anyio.to_thread.run_sync(self._held, study_instance_uid)
        return held & set(sop_instance_uids)

    # -- C-ECHO -------------------------------------------------------------------------------

    def _echo(self) -> int | None:
        assoc = self._associate([(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])])
        try:
            rsp: Any = assoc.send_c_echo()
            return int(rsp.Status) if rsp and "Status" in rsp else None
        finally:
            if assoc.is_established:
                assoc.release()

    async def probe(self) -> str:
        status = await anyio.to_thread.run_sync(self._echo)
        if status != SUCCESS:
            raise DestinationError(f"C-ECHO answered status {status}")
        return f"C-ECHO to {self.config.called_aet}@{self.config.host}:{self.config.port} succeeded"

    async def aclose(self) -> None:
        return None
