from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from relaypacs_hub.api.deps import PublicAccess, State

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(state: State, _auth: PublicAccess) -> dict[str, str]:
    """Liveness and database reachability, for load balancers and the agent's link check."""
    async with state.sessionmaker() as session:
        await session.execute(text("SELECT 1"))
    return {"status": "ok"}
