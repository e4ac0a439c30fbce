"""DICOM C-STORE SCP (pynetdicom): modalities send studies straight to the agent.

- every Storage SOP Class pynetdicom knows, with every transfer syntax it knows (uncompressed,
  deflated, JPEG, JPEG-LS, JPEG 2000, RLE, MPEG, HEVC...); the bytes are kept as sent, never
  decoded or transcoded; Verification (C-ECHO) answered;
- datasets are received in chunks straight to a file (``STORE_RECV_CHUNKED_DATASET``), so a
  1 GB multi-frame does not sit in memory, then ingested like any file the agent owns;
- a success status (0x0000) is sent only once the instance is durably spooled and recorded; an
  instance the agent refuses is kept in quarantine and answered 0xC000 with the reason in
  ErrorComment; the disk reserve answers 0xA700 Out of Resources (PS3.4 Annex B.2.3);
- a full disk while a dataset streams in is answered 0xA700 too, and the association goes on:
  pynetdicom writes the stream in its network thread, where an ENOSPC would abort the
  association, so its temporary file is wrapped (:class:`_StreamFile`) to remember the failure
  and drop the rest of that dataset instead; the modality keeps its copy and sends it again;
- a study sent in one association is ready ``release_grace`` seconds after the association is
  released (an abort leaves it to the quiet period).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    dimse_messages,
    evt,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from relaypacs_agent.ingest.pipeline import DiskFull, Ingestor, Source
from relaypacs_agent.store.db import OperationalError

log = structlog.get_logger("relaypacs.agent.dimse")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110


DISK_FULL_COMMENT = "agent disk full: not stored, send again later"
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_unwritten: set[str] = set()  # datasets whose stream the disk refused, by temporary path
_unwritten_lock = threading.Lock()


class _StreamFile:
    """pynetdicom's temporary file for one incoming dataset, minus the abort on a full disk.

    A write or flush the disk refuses (ENOSPC, quota, size limit) is remembered, the partial
    file is emptied to give the space back, and the rest of the stream is dropped; the C-STORE
    handler then answers 0xA700 for that dataset. Other errors are raised as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.failed: OSError | None = None
        self._f: Any = None
        try:
            self._f = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115
            self.name = self._f.name
        except OSError as exc:
            if exc.errno not in _DISK_ERRNOS:
                raise
            self.name = str(Path(tempfile.gettempdir()) / f"unwritten-{uuid.uuid4().hex}.dcm")
            self._fail(exc)
        self.file = self  # pynetdicom flushes through ``.file``

    def _fail(self, exc: OSError) -> None:
        self.failed = exc
        with _unwritten_lock:
            _unwritten.add(self.name)
        if self._f is not None:
            with contextlib.suppress(OSError):
                os.truncate(self.name, 0)
            with contextlib.suppress(OSError):
                self._f.close()  # its buffer cannot be written either
            self._f = None

    def _guard(self, op: str, *args: Any) -> None:
        if self._f is None:
            return
        try:
            getattr(self._f, op)(*args)
        except OSError as exc:
            if exc.errno not in _DISK_ERRNOS:
                raise
            self._fail(exc)

    def write(self, data: bytes) -> int:
        self._guard("write", data)
        return len(data)

    def flush(self) -> None:
        self._guard("flush")

    def close(self) -> None:
        self._guard("close")


def _stream_failed(path: Path) -> bool:
    with _unwritten_lock:
        if str(path) in _unwritten:
            _unwritten.discard(str(path))
            return True
    return False


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    return ds


class StoreSCP:
    def __init__(
        self,
        ingestor: Ingestor,
        *,
        host: str,
        port: int,
        ae_title: str = "RELAYPACS",
        allowed_calling_aets: list[str] | None = None,
        service_level: str = "routine",
        release_grace: float = 5.0,
        max_associations: int = 10,
    ) -> None:
        self.ingestor = ingestor
        self.host = host
        self.port = port
        self.ae_title = ae_title
        self.allowed = allowed_calling_aets or []
        self.service_level = service_level
        self.release_grace = release_grace
        self.max_associations = max_associations
        self._server: Any = None
        self._studies: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self._requests = itertools.count(1)
        self.received: dict[str, int] = {}

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0 in tests)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        # Process-wide pynetdicom settings: stream datasets to disk, and keep identifiers
        # (patient names) out of its log lines.
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = _StreamFile  # type: ignore[attr-defined,assignment]
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.max_associations
        # pynetdicom handles each PDU in Python: 16 KB PDUs (its default) cost 32 round trips
        # through its state machine per 512 KB image; 1 MiB PDUs make C-STORE several times faster.
        ae.maximum_pdu_size = 1024 * 1024
        ae.require_called_aet = False  # modalities are often configured sloppily; log it instead
        ae.require_calling_aet = list(self.allowed)
        ae.network_timeout = 120
        ae.dimse_timeout = 120
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_gone),
            (evt.EVT_CONN_CLOSE, self._on_gone),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        log.info(
            "dimse_listening",
            host=self.host,
            port=self.bound_port,
            ae_title=self.ae_title,
            allowed_calling_aets=self.allowed or "any",
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- handlers (each association runs in its own thread) ---------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        log.info("dimse_echo", calling_aet=_calling(event))
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        calling = _calling(event)
        path = Path(event.dataset_path)
        if _stream_failed(path):
            path.unlink(missing_ok=True)
            log.error("dimse_refused_disk_full", calling_aet=calling)
            return _status(STATUS_OUT_OF_RESOURCES, DISK_FULL_COMMENT)
        try:
            self.ingestor.check_reserve(path.stat().st_size)
            result = self.ingestor.ingest(
                path,
                Source(
                    kind="dimse",
                    name=calling,
                    service_level=self.service_level,
                    owned=True,
                    # Unique per request, so a re-sent instance counts as a duplicate.
                    source_path=f"dimse://{calling}/{next(self._requests)}",
                ),
            )
        except DiskFull as exc:
            log.error("dimse_refused_disk_reserve", calling_aet=calling)
            return _status(STATUS_OUT_OF_RESOURCES, str(exc))
        except OSError as exc:
            if exc.errno in _DISK_ERRNOS:
                log.error("dimse_refused_disk_full", calling_aet=calling)
                return _status(STATUS_OUT_OF_RESOURCES, DISK_FULL_COMMENT)
            log.error("dimse_store_failed", calling_aet=calling, error=str(exc)[:200])
            return _status(STATUS_OUT_OF_RESOURCES, f"cannot store: {exc}")
        except OperationalError as exc:
            # "database or disk is full": the catalogue's disk, same answer.
            if "full" not in str(exc):
                raise
            log.error("dimse_refused_disk_full", calling_aet=calling, where="catalogue")
            return _status(STATUS_OUT_OF_RESOURCES, DISK_FULL_COMMENT)
        with self._lock:
            self.received[result.outcome] = self.received.get(result.outcome, 0) + 1
            if result.study_instance_uid and result.outcome != "quarantined":
                self._studies.setdefault(id(event.assoc), set()).add(result.study_instance_uid)
        if result.outcome == "quarantined":
            return _status(STATUS_CANNOT_UNDERSTAND, f"refused ({result.reason}); kept")
        return STATUS_SUCCESS

    def _on_released(self, event: evt.Event) -> None:
        with self._lock:
            studies = self._studies.pop(id(event.assoc), set())
        if studies:
            self.ingestor.store.mark_ready(sorted(studies), time.time() + self.release_grace)
            log.info(
                "dimse_association_released", calling_aet=_calling(event), studies=len(studies)
            )

    def _on_gone(self, event: evt.Event) -> None:
        # Aborted or dropped: what arrived is kept; the quiet period decides when it is ready.
        with self._lock:
            studies = self._studies.pop(id(event.assoc), None)
        if studies:
            log.warning("dimse_association_ended_without_release", calling_aet=_calling(event))

    def _on_rejected(self, event: evt.Event) -> None:
        log.warning("dimse_association_rejected", calling_aet=_calling(event))


def _calling(event: evt.Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except Exception:
        return "?"
