"""The hub's PostgreSQL pool: a connection idle past ``PING_AFTER_IDLE_SECONDS`` is tested
before use, and one the server dropped meanwhile is replaced without the caller seeing an error;
a connection handed back moments ago is used as it is (no test round trips)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from relaypacs_hub.db import session as db_session

pytestmark = pytest.mark.integration


async def _backend_pid(engine: object) -> int:
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        engine = db_session.make_engine(pg_url)
        try:
            first = await _backend_pid(engine)
            # Used again at once: the same connection, not tested.
            assert await _backend_pid(engine) == first

            # PostgreSQL ends that backend (a restart, an idle timeout, a failover).
            dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
            admin = await asyncpg.connect(dsn)
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
            finally:
                await admin.close()

            # Not idle long enough to be tested: the dead connection is used and fails, and the
            # pool is renewed after the failure.
            await asyncio.sleep(0.2)  # the backend's end reaches the client socket
            with pytest.raises(DBAPIError, match="connection is closed"):
                await _backend_pid(engine)
            second = await _backend_pid(engine)
            assert second != first

            # Idle past the threshold: tested first, and a dropped one is replaced unseen.
            admin = await asyncpg.connect(dsn)
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", second)
            finally:
                await admin.close()
            monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", 0.0)
            await asyncio.sleep(0.01)
            third = await _backend_pid(engine)
            assert third not in (first, second)
        finally:
            await engine.dispose()

    asyncio.run(run())
