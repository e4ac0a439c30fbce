"""One error tree for all of RelayPACS.

::

    RelayError
    ├── DicomValidationError      a file is not an acceptable DICOM instance (carries a reason code)
    ├── ProtocolError             the agent/hub conversation went wrong
    │   ├── ChecksumMismatch      bytes do not hash to what was declared
    │   │   └── UploadChecksumMismatch   ... a tus PATCH body (tus checksum extension)
    │   ├── UnknownUpload         an upload or study the other side does not know (or may not see)
    │   │   └── UploadExpired     a tus upload that passed its Upload-Expires
    │   ├── OffsetConflict        the sender's idea of an offset differs from the receiver's
    │   ├── UnsupportedVersion    no Tus-Resumable the server speaks
    │   ├── UnsupportedMediaType  a PATCH body that is not application/offset+octet-stream
    │   ├── TooLarge              more bytes than the receiver accepts or than were declared
    │   ├── UploadLocked          a tus final concatenation cannot be patched
    │   ├── UploadBusy            another request is writing this upload (Transient)
    │   ├── NotFound              no such thing, or not one the caller may see
    │   ├── Forbidden             the caller may not do this
    │   ├── Conflict              held with other bytes (``missing``: which ones)
    │   └── Incomplete            a commit before every declared instance arrived (``missing``)
    ├── RoutingError              routing rules or destination configuration are unusable
    ├── StorageError              spool or object store failed
    └── DestinationError          a PACS refused or could not be reached

``Transient`` is a marker mixed into any of them when retrying the same operation later may
succeed (a timeout, a 503, a connection reset). Adapters translate third-party errors at the
boundary with ``raise OurError(...) from exc``.

No class here knows HTTP: ``relaypacs_shared.wire.PROBLEMS`` is the one table of problem codes and
status codes, read by the hub's exception handlers and, in the other direction, by the agent's
hub client.
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
    """``offset`` is what the receiver holds, when it is known (sent back as Upload-Offset)."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class UploadChecksumMismatch(ChecksumMismatch):
    pass


class UploadExpired(UnknownUpload):
    pass


class UnsupportedVersion(ProtocolError):
    pass


class UnsupportedMediaType(ProtocolError):
    pass


class TooLarge(ProtocolError):
    pass


class UploadLocked(ProtocolError):
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


class UploadBusy(ProtocolError, Transient):
    pass


class NotFound(ProtocolError):
    pass


class Forbidden(ProtocolError):
    pass


class Conflict(ProtocolError):
    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


class Incomplete(ProtocolError):
    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, Transient)
