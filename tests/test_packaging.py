"""The agent installs without the hub's server-side dependencies (a Raspberry Pi needs no ORM).

The agent does serve the LAN web app with Starlette on uvicorn (both pure Python); FastAPI, the
hub's framework with its pydantic-heavy routing, stays out."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement

HUB_ONLY = {
    "sqlalchemy",
    "asyncpg",
    "alembic",
    "aiosqlite",
    "minio",
    "fastapi",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(root: str) -> set[str]:
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return seen


def test_agent_dependency_closure_excludes_hub_packages() -> None:
    closure = _closure("relaypacs-agent")
    assert "pydicom" in closure and "httpx" in closure  # the walk really followed requirements
    assert closure & {_norm(n) for n in HUB_ONLY} == set()
    assert "relaypacs-hub" not in closure


def test_hub_has_its_server_side_dependencies() -> None:
    closure = _closure("relaypacs-hub")
    assert {"sqlalchemy", "asyncpg", "alembic", "fastapi"} <= closure
    assert "relaypacs-agent" not in closure
