"""Durable file moves: write to a temporary name, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
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


def keep_private(path: Path) -> None:
    """A file taken from elsewhere by rename or link keeps its old mode: make it ``0600``
    (the copy fallbacks create theirs under the process's private umask)."""
    # Another account's file cannot be linked, so it was copied: nothing to change then.
    with contextlib.suppress(PermissionError):
        path.chmod(0o600)


def move_durable(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``: a rename on the same filesystem, else a durable copy + unlink."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    keep_private(src)
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


_CHUNK = 1024 * 1024


def stage_copy(src: Path, staging_dir: Path) -> tuple[Path, str]:
    """Copy ``src`` into ``staging_dir``, hashing on the way, fsync; returns (copy, sha256).

    One read of the source does both jobs; the copy is what gets validated and kept, so the
    bytes checked, hashed and spooled are the same bytes even if the source changes meanwhile.
    """
    staging_dir.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir / f"{os.getpid()}-{uuid.uuid4().hex}.tmp"
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            while n := fin.readinto(buf):
                chunk = view[:n]
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, h.hexdigest()


def link_into(src: Path, staging_dir: Path) -> Path | None:
    """A hard link to ``src`` in ``staging_dir``, or None where links cannot be made
    (another filesystem, a share that has none)."""
    staging_dir.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir / f"{os.getpid()}-{uuid.uuid4().hex}.tmp"
    try:
        os.link(src, tmp)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            return None
        raise
    return tmp


def hash_and_sync(path: Path) -> str:
    """SHA-256 of a file the agent wrote itself, made durable before it is renamed anywhere."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with path.open("rb+") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
        os.fsync(f.fileno())
    return h.hexdigest()


def place_in_spool(staged: Path, spool_dir: Path, sha256: str) -> Path:
    """Rename a durable staged file to its content address (same filesystem), fsync the folder.

    If the same bytes are already there (a crash before the catalogue row), they are kept.
    """
    dest = spool_path(spool_dir, sha256)
    if dest.exists() and dest.stat().st_size == staged.stat().st_size:
        staged.unlink(missing_ok=True)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    keep_private(staged)
    try:
        os.replace(staged, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_durable(staged, dest)  # staged elsewhere (another filesystem): copy instead
        staged.unlink(missing_ok=True)
    fsync_dir(dest.parent)
    return dest


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(folder: Path) -> int:
    """Remove staging leftovers (``<pid>-...``) of processes that no longer run (crashes)."""
    if not folder.exists():
        return 0
    removed = 0
    for entry in folder.iterdir():
        pid, _, _ = entry.name.partition("-")
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed
