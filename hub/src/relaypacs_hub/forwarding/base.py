"""What every destination type implements.

A destination receives one committed study (or the part of it it does not hold yet), reports per
instance what the archive accepted, and can be asked afterwards which instances the archive really
holds. A job is done only when ``confirm`` says the archive has every instance.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutgoingInstance:
    """One instance of a committed study, with lazy access to its bytes in the object store."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sha256: str
    size: int
    read: Callable[[], Awaitable[bytes]]


@dataclass
class DeliveryResult:
    """Per-instance outcome of one delivery attempt.

    ``delivered`` holds the SOP Instance UIDs the archive accepted (an instance it already had
    counts as accepted); ``failed`` maps SOP Instance UIDs to the archive's reason, in plain words.
    """

    delivered: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)


class Destination(Protocol):
    name: str

    async def deliver(
        self, study_instance_uid: str, instances: Sequence[OutgoingInstance]
    ) -> DeliveryResult:
        """Send the instances; never raise for a per-instance refusal, report it in the result.

        Raise ``relaypacs_shared.errors.DestinationError`` (with ``Transient`` mixed in when a retry
        may help) when the archive cannot be reached or answers nonsense.
        """
        ...

    async def confirm(self, study_instance_uid: str, sop_instance_uids: Sequence[str]) -> set[str]:
        """Return the subset of ``sop_instance_uids`` the archive holds now."""
        ...

    async def aclose(self) -> None: ...
