"""What readiness asks of the database."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


async def ping_database(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Raises unless the database answers a trivial query."""
    async with sessionmaker() as session:
        await session.execute(text("SELECT 1"))
