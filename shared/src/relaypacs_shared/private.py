"""Files RelayPACS writes are private to the user it runs as, whatever umask it was started with.

The agent's catalogue holds password hashes and TOTP secrets, and its spool, quarantine and the
hub's staging and object folders hold patient images: none of it is for other accounts on the
machine. :func:`private_files` sets the process umask to ``077`` (new files ``0600``, new folders
``0700``) and takes group and other permissions off folders and files left by an earlier,
looser start. Both commands that write such files call it first: ``relaypacs-agent`` (every
command) and ``relaypacs-hub`` (``serve``, ``worker`` and the others).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_umask() -> int:
    """Make every file and folder this process creates from now on private; returns the old
    umask."""
    return os.umask(PRIVATE_UMASK)


def tighten(path: Path) -> bool:
    """Take group and other permissions off ``path`` (not recursively) if this user owns it.

    A folder made private keeps other accounts out of everything below it, so tightening the
    top folders is enough for files an earlier start left readable. Returns whether it changed.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return False
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return False
    path.chmod(mode & 0o700)
    return True


def private_files(paths: Iterable[Path] = ()) -> None:
    """Private umask for this process, and ``paths`` (data folders, database files) tightened."""
    private_umask()
    for path in paths:
        tighten(path)
