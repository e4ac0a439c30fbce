"""What every destination type implements.

A destination receives one committed study (or the part of it it does not hold yet), reports per
instance what the archive accepted, and can be asked afterwards which instances the archive really
holds. A job is done only when ``confirm`` says the archive has every instance.

Delivery is done in batches (a STOW-RS request, a run of C-STOREs, a few files). After each batch
the destination calls ``on_batch`` with that batch's outcome: the worker records progress there,
renews its lease, and answers ``False`` when the job should stop at this boundary (a STAT job is
waiting for the destination, or the worker is shutting down). Nothing is lost by stopping: the
next attempt sends only what has not been accepted yet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutgoingInstance:
    """One instance of a committed study, with lazy access to its bytes in the object store.

    ``read`` returns the whole instance; ``stream`` (when given) yields it in chunks, so a
    destination can send it without holding it in memory.
    """

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sha256: str
    size: int
    read: Callable[[], Awaitable[bytes]]
    stream: Callable[[], AsyncIterator[bytes]] | None = None


@dataclass
class DeliveryResult:
    """Per-instance outcome of one delivery attempt.

    ``delivered`` holds the SOP Instance UIDs the archive accepted (an instance it already had
    counts as accepted); ``failed`` maps SOP Instance UIDs to the archive's reason, in plain words.
    ``stopped`` is set when ``on_batch`` asked to stop before every instance was sent.
    """

    delivered: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    def merge(self, other: DeliveryResult) -> None:
        self.delivered |= other.delivered
        self.failed.update(other.failed)
        for uid in self.delivered:  # refused in one batch, accepted in a later one
            self.failed.pop(uid, None)


BatchCallback = Callable[[DeliveryResult], Awaitable[bool]]


async def _always_go_on(_result: DeliveryResult) -> bool:
    return True


def batch_callback(on_batch: BatchCallback | None) -> BatchCallback:
    return on_batch or _always_go_on


class Destination(Protocol):
    name: str

    async def deliver(
        self,
        study_instance_uid: str,
        instances: Sequence[OutgoingInstance],
        on_batch: BatchCallback | None = None,
    ) -> DeliveryResult:
        """Send the instances; never raise for a per-instance refusal, report it in the result.

        Raise ``relaypacs_shared.errors.DestinationError`` (with ``Transient`` mixed in when a retry
        may help) when the archive cannot be reached or answers nonsense.
        """
        ...

    async def confirm(
        self, study_instance_uid: str, sop_instance_uids: Sequence[str]
    ) -> set[str] | None:
        """Return the subset of ``sop_instance_uids`` the archive holds now.

        ``None`` means the archive cannot be asked (a DIMSE peer without C-FIND): the worker then
        takes the archive's per-instance acknowledgements as the confirmation.
        """
        ...

    async def probe(self) -> str:
        """Check the archive answers (C-ECHO, a QIDO-RS query, a writable folder).

        Returns a short description of what answered; raises ``DestinationError`` otherwise.
        """
        ...

    async def aclose(self) -> None: ...
