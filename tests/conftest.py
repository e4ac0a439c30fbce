"""Fixtures shared by every test package: real PostgreSQL, generated studies."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_HOST = os.environ.get("RELAYPACS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("RELAYPACS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("RELAYPACS_TEST_PG_USER", "postgres")


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_reachable() -> bool:
    try:
        asyncio.run(asyncio.wait_for(_admin("SELECT 1"), 5))
    except Exception:
        return False
    return True


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on this machine's server, dropped afterwards."""
    if not _pg_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")
        pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")
    name = f"relaypacs_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def _keep_umask() -> Iterator[None]:
    """The CLIs make their process's files private (umask 077); a test invoking one in-process
    must not change what later tests create."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
