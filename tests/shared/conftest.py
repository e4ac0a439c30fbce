"""Fixtures of the shared-core tests: one small generated CT instance to damage in many ways."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaypacs_dev.generate import generate_study


@pytest.fixture(scope="session")
def ct_instance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid Explicit VR Little Endian CT image (64x64), written once per session; read-only."""
    study = generate_study(
        tmp_path_factory.mktemp("ct"), modality="CT", instances=1, seed=11, rows=64, columns=64
    )
    return study.files[0]


@pytest.fixture
def ct_bytes(ct_instance: Path) -> bytes:
    return ct_instance.read_bytes()
