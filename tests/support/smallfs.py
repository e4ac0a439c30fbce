"""A real, small filesystem (tmpfs) for tests of what happens when the disk fills up.

Mounting needs root, or sudo without a password (as ``make system-deps`` uses); elsewhere the
test is skipped with the reason (failed under CI, where it must run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _sudo() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], check=False).returncode == 0:
        return ["sudo", "-n"]
    return None


@contextmanager
def small_filesystem(path: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_bytes`` at ``path`` (owned by this user) for the block."""
    sudo = _sudo()
    if sudo is None:
        why = "a full-disk test mounts a small tmpfs: needs root or passwordless sudo"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_bytes},mode=0700,uid={os.getuid()},gid={os.getgid()}"
    subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run([*sudo, "umount", "-l", str(path)], check=False)
