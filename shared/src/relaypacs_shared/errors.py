"""One error tree for all of RelayPACS.

::

    RelayError
    ├── DicomValidationError      a file is not an acceptable DICOM instance (carries a reason code)
    ├── ProtocolError             the agent/hub conversation went wrong
    │   ├── ChecksumMismatch      bytes do not hash to what was declared
    │   ├── UnknownUpload         an upload or study the other side does not know
    │   └── OffsetConflict        the sender's idea of an offset differs from the receiver's
    ├── RoutingError              routing rules or destination configuration are unusable
    ├── StorageError              spool or object store failed
    └── DestinationError          a PACS refused or could not be reached

``Transient`` is a marker mixed into any of them when retrying the same operation later may
succeed (a timeout, a 503, a connection reset). Adapters translate third-party errors at the
boundary with ``raise OurError(...) from exc``.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error RelayPACS raises on purpose."""


class Transient:
    """Marker: the operation may succeed if retried later."""


class DicomValidationError(RelayError):
    """A file was refused; ``reason`` is a stable code, the message is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ProtocolError(RelayError):
    pass


class ChecksumMismatch(ProtocolError):
    pass


class UnknownUpload(ProtocolError):
    pass


class OffsetConflict(ProtocolError):
    pass


class RoutingError(RelayError):
    pass


class StorageError(RelayError):
    pass


class DestinationError(RelayError):
    pass


class TransientDestinationError(DestinationError, Transient):
    """The archive could not be reached or answered 5xx / timed out: retry later."""


class TransientStorageError(StorageError, Transient):
    pass


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, Transient)
