"""dcmtk's command-line peers (storescu, echoscu) as real DICOM peers in tests.

pynetdicom installs its own ``storescu``/``echoscu`` scripts into the virtualenv, which would
shadow dcmtk's on PATH: look past the virtualenv and check that the binary is dcmtk's.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest


@functools.cache
def dcmtk(tool: str) -> str | None:
    venv_bin = str(Path(sys.prefix) / "bin")
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        if not folder or os.path.abspath(folder) == os.path.abspath(venv_bin):
            continue
        candidate = Path(folder) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            out = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, check=False
            )
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return str(candidate)
    return None


def require(tool: str) -> str:
    path = dcmtk(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"dcmtk's {tool} is not installed (make system-deps)")
        pytest.skip(f"dcmtk's {tool} is not installed (make system-deps)")
    return path


def echoscu(port: int, *, called: str = "RELAYPACS", calling: str = "ECHOSCU") -> int:
    proc = subprocess.run(
        [require("echoscu"), "-aec", called, "-aet", calling, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode


def storescu(
    port: int,
    paths: list[Path],
    *,
    called: str = "RELAYPACS",
    calling: str = "STORESCU",
    timeout: float = 300,
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Send files or folders (recursively) in one association, each in its own transfer syntax."""
    return subprocess.run(
        [require("storescu"), "-aec", called, "-aet", calling, "+sd", "+r", "-nh", "-R",
         *(extra or []), "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip
