"""Durable file moves: write to a temporary name, fsync, rename, fsync the folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_durable(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` so that ``dest`` is either absent or whole, even after a crash."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)


def move_durable(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``: a rename on the same filesystem, else a durable copy + unlink."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
    except OSError:
        copy_durable(src, dest)
        src.unlink()
        fsync_dir(src.parent)
        return
    fsync_dir(dest.parent)


def spool_path(spool_dir: Path, sha256: str) -> Path:
    """Content-addressed location of an instance's bytes in the spool."""
    return spool_dir / sha256[:2] / f"{sha256}.dcm"


def put_in_spool(src: Path, spool_dir: Path, sha256: str) -> Path:
    """Copy into the spool unless the same bytes are already there (content-addressed)."""
    dest = spool_path(spool_dir, sha256)
    if dest.exists() and dest.stat().st_size == src.stat().st_size:
        return dest
    copy_durable(src, dest)
    return dest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()
