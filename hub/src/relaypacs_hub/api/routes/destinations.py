"""Admin API: destinations and their health.

``GET /api/v1/destinations`` shows each destination's queue (jobs per state), its last
confirmed delivery and last error, and the time to PACS of its recent studies; with ``?probe=true``
each archive is also asked whether it answers (C-ECHO, a QIDO-RS query, a writable folder).
"""

from __future__ import annotations

from fastapi import APIRouter

from relaypacs_hub.api.deps import AdminAuth, State
from relaypacs_hub.services import destinations
from relaypacs_hub.services.destinations import DestinationHealth

router = APIRouter(prefix="/api/v1/destinations", tags=["admin: destinations"])


@router.get("", response_model=list[DestinationHealth])
async def list_destinations(
    state: State, _auth: AdminAuth, probe: bool = False
) -> list[DestinationHealth]:
    """Every configured destination with its queue and, with ``?probe=true``, a live check."""
    return await destinations.list_health(state, probe)


@router.get("/{name}", response_model=DestinationHealth)
async def get_destination(
    name: str, state: State, _auth: AdminAuth, probe: bool = True
) -> DestinationHealth:
    """One destination, probed by default."""
    return await destinations.health(state, name, probe)
