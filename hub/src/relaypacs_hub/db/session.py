"""Engine and session factory, built from settings (no module globals)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def make_engine(url: str) -> AsyncEngine:
    """``hide_parameters``: a failed statement's message (logged, or in an exception that
    reaches a log) carries the SQL without its values, which may be patient data."""
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_async_engine(url, pool_size=10, max_overflow=10, hide_parameters=True)
    _ping_idle_connections(engine)
    return engine


# A pooled connection that has been idle this long is tested before use.
PING_AFTER_IDLE_SECONDS = 5.0


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Test a pooled connection before use only when it has been idle for a while.

    SQLAlchemy's ``pool_pre_ping`` tests every checkout, and for asyncpg a test is three round
    trips (begin, a query, rollback): under load that was more than half of a tus PATCH's
    round trips to PostgreSQL. A connection handed back moments ago is almost always alive; one
    that is not (the server restarted under load) fails its statement, the hub answers that one
    request 503 ``database_unavailable`` (the agent retries it) and SQLAlchemy replaces every
    connection of the pool made before the failure."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _before_use(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_conn.ping()
        except Exception as exc:
            # The pool drops this connection and checks out another (a new one if needed).
            raise DisconnectionError(f"idle connection failed its test: {exc}") from exc


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def _database_errors() -> tuple[type[Exception], ...]:
    import asyncpg
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    return (DBAPIError, PoolTimeout, asyncpg.PostgresError, ConnectionError)


# What an unreachable or failing database raises (a connection refused or reset, the pool timing
# out, the server shutting down): answered 503 "database_unavailable", never a bare 500.
DATABASE_ERRORS = _database_errors()
