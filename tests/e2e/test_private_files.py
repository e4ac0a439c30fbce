"""Files with patient images or secrets are private to the account RelayPACS runs as, even when
it is started under a permissive umask (022: new files world-readable) and its folders were
left readable by an earlier start."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from relaypacs_dev.generate import generate_study
from tests.e2e.helpers import archive_files, copy_tree
from tests.support.processes import AgentProcess, HubProcess, _Proc, folder_destinations, wait_for

pytestmark = pytest.mark.integration


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _readable_by_others(root: Path) -> list[str]:
    loose = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose.append(f"{oct(mode)} {path.relative_to(root.parent)}")
    return loose


def test_agent_and_hub_files_are_private_under_a_permissive_umask(tmp_path: Path) -> None:
    study = generate_study(tmp_path / "source", instances=4, seed=881, rows=64, columns=64)
    archive = tmp_path / "archive"
    with _umask(0o022):
        # Folders an earlier start made readable to everyone.
        (tmp_path / "hub").mkdir(mode=0o755)
        (tmp_path / "a" / "agent").mkdir(parents=True, mode=0o755)
        hub = HubProcess(
            tmp_path,
            destinations_file=str(folder_destinations(tmp_path / "d.toml", archive)),
            worker_enabled="false",
        )
        hub.start()
        worker = _Proc(
            [sys.executable, "-m", "relaypacs_hub.cli", "worker"],
            {k: v for k, v in hub.env.items() if k.startswith("RELAYPACS_")},
            tmp_path / "worker.log",
        )
        worker.start()
        agent = AgentProcess(tmp_path / "a", hub.url)
        agent.start()
    try:
        copy_tree(tmp_path / "source", agent.inbox)
        (agent.inbox / "letter.txt").write_text("not an image\n")  # goes to quarantine
        wait_for(
            lambda: agent.status()["totals"]["studies_by_state"].get("delivered") == 1,
            120,
            "delivery through the separate worker",
        )
        assert len(archive_files(archive)) == len(study.files)
        wait_for(lambda: agent.status()["totals"]["quarantined"] == 1, 30, "the letter refused")
    finally:
        agent.terminate()
        worker.terminate()
        hub.terminate()
    assert (agent.data_dir / "agent.db").exists()
    assert list((agent.data_dir / "spool").rglob("*.dcm")), "the spool holds the images"
    assert list((agent.data_dir / "quarantine").rglob("*letter.txt"))
    assert list((tmp_path / "hub" / "objects").rglob("*")), "the hub stored objects"
    assert _readable_by_others(agent.data_dir) == []
    assert _readable_by_others(tmp_path / "hub") == []
    assert _readable_by_others(archive) == []
