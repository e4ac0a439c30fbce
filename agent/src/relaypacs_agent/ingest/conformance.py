"""Background conformance check of spooled instances with dciodvfy (Debian's dicom3tools).

Never blocking: an instance is relayed whatever dciodvfy says; its findings (values removed,
see ``relaypacs_shared.conformance``) are recorded on the instance for people to read in
``relaypacs-agent status``. Without dciodvfy installed the checker does nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import structlog

from relaypacs_agent.store.db import Store
from relaypacs_shared.conformance import parse_dciodvfy

log = structlog.get_logger("relaypacs.agent.conformance")


def find_dciodvfy() -> str | None:
    return shutil.which("dciodvfy")


def check_file(binary: str, path: Path, timeout: float = 60.0) -> list[str]:
    """dciodvfy's findings for one file, as plain strings (``error: ...``/``warning: ...``)."""
    # Niced: the check may lag behind ingest, it must not slow it down.
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    try:
        proc = subprocess.run(
            [*nice, binary, str(path)],
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return ["warning: dciodvfy timed out"]
    text = (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
    return [str(f) for f in parse_dciodvfy(text)]


class ConformanceChecker:
    def __init__(self, store: Store, binary: str, *, idle_seconds: float = 2.0) -> None:
        self.store = store
        self.binary = binary
        self.idle = idle_seconds
        self.wake = threading.Event()

    def run_once(self, limit: int = 50) -> int:
        rows = self.store.unchecked_instances(limit)
        for row in rows:
            path = Path(row["spool_path"])
            findings = check_file(self.binary, path) if path.exists() else []
            self.store.set_conformance(row["sop_instance_uid"], findings)
            errors = sum(1 for f in findings if f.startswith("error"))
            if errors:
                log.info(
                    "conformance_findings",
                    sop_uid=row["sop_instance_uid"],
                    errors=errors,
                    warnings=len(findings) - errors,
                )
        return len(rows)

    def run(self, stop: threading.Event) -> None:
        log.info("conformance_checker_started", binary=self.binary)
        while not stop.is_set():
            try:
                if self.run_once():
                    continue
            except Exception:
                log.exception("conformance_check_failed")
            stop.wait(self.idle)
