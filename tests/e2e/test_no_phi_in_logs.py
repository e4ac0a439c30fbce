"""No patient data in logs: an end-to-end run at debug level leaves no name or ID in them.

A study with a distinctive patient name and ID, in files and folders named after the patient (as
exported studies often are), is delivered through a real hub and agent; two bad files named after
the patient are quarantined. Neither process's log may contain the name, its parts or the ID.
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest

from relaypacs_dev.generate import generate_study
from tests.support.processes import AgentProcess, HubProcess, folder_destinations, wait_for

pytestmark = pytest.mark.integration

PATIENT_ID = "PHI-TEST-1234"
PATIENT_NAME = "DOE^JANE^PHITEST"
# Case-sensitive parts (short words like "DOE" occur in ordinary lowercase text), and
# case-insensitive ones that never occur by chance.
EXACT = ("DOE", "JANE", "PHITEST", PATIENT_ID, PATIENT_NAME, "SYNTHETIC^")
ANY_CASE = ("phitest", "phi-test", "phi_test", "doe^jane", "doe_jane", "jane_doe", "jane doe")


def _leaks(text: str) -> list[str]:
    found = [s for s in EXACT if s in text]
    found += [s for s in ANY_CASE if s in text.lower()]
    return found


def _patient_files(tmp_path: Path, inbox: Path) -> int:
    study = generate_study(
        tmp_path / "gen", instances=12, rows=64, columns=64, seed=7, patient_id=PATIENT_ID
    )
    folder = inbox / "DOE_JANE_PHITEST" / "CT head PHI-TEST-1234"
    folder.mkdir(parents=True)
    for i, path in enumerate(study.files):
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName).startswith("SYNTHETIC^")
        ds.PatientName = PATIENT_NAME
        ds.save_as(folder / f"DOE_JANE_PHITEST_{i:03d}.dcm")
    # Two files the agent must quarantine, named after the patient.
    bad = inbox / "DOE_JANE_PHITEST"
    (bad / "DOE JANE PHITEST referral.txt").write_text("Referral for Jane Doe.\n")
    good = (folder / "DOE_JANE_PHITEST_000.dcm").read_bytes()
    (bad / "DOE_JANE_PHITEST-cut.dcm").write_bytes(good[: len(good) - 3000])
    return len(study.files)


def test_logs_carry_no_patient_names_or_ids(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    hub = HubProcess(
        tmp_path,
        destinations_file=str(folder_destinations(tmp_path / "d.toml", archive)),
        log_level="debug",
        log_json="true",
    )
    hub.start()
    agent = AgentProcess(tmp_path, hub.url, log_level="debug", log_json="true")
    try:
        agent.start()
        staging = tmp_path / "staging"
        count = _patient_files(tmp_path, staging)
        for src in sorted(staging.rglob("*")):
            if src.is_file():
                dest = agent.inbox / src.relative_to(staging)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(src.read_bytes())
        wait_for(
            lambda: agent.status()["totals"]["studies_by_state"].get("delivered") == 1,
            120,
            "the study delivered",
            interval=1,
        )
        totals = agent.status()["totals"]
        assert totals["instances"] == count
        assert totals["quarantined"] == 2
        delivered = [p for p in archive.rglob("*") if p.is_file()]
        assert len(delivered) == count
        assert str(pydicom.dcmread(delivered[0]).PatientName) == PATIENT_NAME  # data intact
    finally:
        agent.terminate()
        hub.terminate()
    for proc in (hub, agent):
        text = proc.log()
        assert re.search(r'"event": ?"', text), f"{proc.name}.log: no JSON events:\n{text[:2000]}"
        leaks = _leaks(text)
        lines = [line for line in text.splitlines() if _leaks(line)][:10]
        assert not leaks, f"{proc.name}.log leaks {leaks}:\n" + "\n".join(lines)
