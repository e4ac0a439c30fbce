"""Fixtures of the agent tests: a catalogue, an ingestor and small generated studies."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaypacs_agent.ingest.pipeline import Ingestor
from relaypacs_agent.store.db import Store
from relaypacs_dev.generate import GeneratedStudy, generate_study


@dataclass(frozen=True)
class AgentDirs:
    inbox: Path
    spool: Path
    quarantine: Path
    db: Path


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> GeneratedStudy:
    """Three 64x64 CT instances, generated once per session; copy them before use."""
    return generate_study(
        tmp_path_factory.mktemp("study"), modality="CT", instances=3, seed=5, rows=64, columns=64
    )


@pytest.fixture
def dirs(tmp_path: Path) -> AgentDirs:
    d = AgentDirs(
        inbox=tmp_path / "inbox",
        spool=tmp_path / "spool",
        quarantine=tmp_path / "quarantine",
        db=tmp_path / "agent.db",
    )
    d.inbox.mkdir()
    return d


@pytest.fixture
def store(dirs: AgentDirs) -> Iterator[Store]:
    s = Store(dirs.db)
    yield s
    s.close()


@pytest.fixture
def ingestor(store: Store, dirs: AgentDirs) -> Ingestor:
    return Ingestor(
        store, spool_dir=dirs.spool, quarantine_dir=dirs.quarantine, max_instance_bytes=1 << 30
    )


Drop = Callable[..., Path]


@pytest.fixture
def drop(dirs: AgentDirs) -> Drop:
    """``drop(src, name=None)``: copy ``src`` into the inbox, as a modality or a user would."""

    def _drop(src: Path, name: str | None = None) -> Path:
        dest = dirs.inbox / (name or src.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return dest

    return _drop
