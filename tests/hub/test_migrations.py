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


# Expression indexes (lower(username)) cannot be reflected for comparison: checked on their own.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*expression-based index:UserWarning", "ignore:.*expression-based index"
)


def _case_variant_refused(url: str) -> bool:
    """Whether the database itself refuses a second user named like the first but for case."""
    import sqlalchemy as sa
    from sqlalchemy.exc import IntegrityError

    insert = sa.text(
        "INSERT INTO users (username, role, facilities_json, password_hash, totp_enabled, "
        "recovery_codes_json, disabled, created_at, updated_at) VALUES "
        "(:name, 'clinician', '[]', 'x', false, '[]', false, CURRENT_TIMESTAMP, "
        "CURRENT_TIMESTAMP)"
    )

    async def run() -> bool:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(insert, {"name": "alice"})
            try:
                async with engine.begin() as conn:
                    await conn.execute(insert, {"name": "ALICE"})
            except IntegrityError:
                return True
            return False
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_sqlite_migrations_match_models(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    upgrade(url)  # idempotent at head
    assert _diff(url) == []
    assert _case_variant_refused(url)


@pytest.mark.integration
def test_postgresql_migrations_match_models(pg_url: str) -> None:
    upgrade(pg_url)
    assert _diff(pg_url) == []
    assert _case_variant_refused(pg_url)
