"""Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from relaypacs_hub.db.migrate import upgrade
from relaypacs_hub.db.models import Base
from relaypacs_hub.db.session import make_engine


def _diff(url: str) -> list[object]:
    async def run() -> list[object]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda c: list(compare_metadata(MigrationContext.configure(c), Base.metadata))
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_sqlite_migrations_match_models(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    upgrade(url)  # idempotent at head
    assert _diff(url) == []


@pytest.mark.integration
def test_postgresql_migrations_match_models(pg_url: str) -> None:
    upgrade(pg_url)
    assert _diff(pg_url) == []
