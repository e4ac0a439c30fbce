"""Every audit action the agent and the hub write has its own explicit ATNA event (no mapping by
prefix, where ``lan.login`` once exported as "Application Activity"). The source is walked: a new
``audit(...)`` call with an action missing from ``AUDIT_ACTIONS`` fails here."""

from __future__ import annotations

import ast
from pathlib import Path

from relaypacs_shared.audit import AUDIT_ACTIONS, ChainedRecord, to_atna

ROOT = Path(__file__).resolve().parents[1]
# Call -> index of the action among its positional arguments.
AUDIT_CALLS = {"audit": 2, "audit_append": 2, "audit.append": 2, "_audit_local": 0}
# Actions built at run time, and every value they take (checked against the code's own states).
FAMILIES = {
    "quarantine.": {"released", "deleted"},
    "report.pacs_": {"stored", "retry", "skipped", "refused"},
    "study_claim_": {"accepted", "refused"},
}


def _actions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in [*ROOT.glob("agent/src/**/*.py"), *ROOT.glob("hub/src/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = (
                f.id
                if isinstance(f, ast.Name)
                else f"{ast.unparse(f.value)}.{f.attr}"
                if isinstance(f, ast.Attribute)
                else ""
            )
            if name not in AUDIT_CALLS or len(node.args) <= AUDIT_CALLS[name]:
                continue
            arg = node.args[AUDIT_CALLS[name]]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            values: list[str] = []
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                values = [arg.value]
            elif isinstance(arg, ast.IfExp):
                values = [b.value for b in (arg.body, arg.orelse) if isinstance(b, ast.Constant)]
            elif isinstance(arg, ast.JoinedStr):
                head = arg.values[0]
                prefix = head.value if isinstance(head, ast.Constant) else ""
                assert prefix in FAMILIES, f"{where}: an action built at run time: {prefix!r}…"
                values = [prefix + v for v in FAMILIES[prefix]]
            elif isinstance(arg, ast.Name) and where.startswith("agent/src/relaypacs_agent/cli.py"):
                continue  # inside _audit_local: its callers pass constants (collected too)
            else:
                raise AssertionError(f"{where}: cannot read the audit action {ast.unparse(arg)}")
            for v in values:
                found.setdefault(v, []).append(where)
    return found


def test_every_audit_action_written_has_its_own_atna_event() -> None:
    found = _actions()
    assert len(found) >= 45  # the walk finds the calls (not a check that passes on nothing)
    missing = {a: w for a, w in found.items() if a not in AUDIT_ACTIONS}
    assert missing == {}, f"actions with no ATNA event in relaypacs_shared.audit: {missing}"
    unused = set(AUDIT_ACTIONS) - set(found)
    assert unused == set(), f"ATNA entries for actions nothing writes: {unused}"


def test_sign_ins_and_security_changes_export_as_what_they_are() -> None:
    def event(action: str) -> tuple[str, str]:
        from relaypacs_shared.audit import AuditRecord

        record = AuditRecord(seq=1, at="2026-12-06T00:00:00Z", actor="a", action=action, target="t")
        ids = to_atna(ChainedRecord(record=record, prev_hash="0" * 64, hash="1" * 64))
        ev = ids["EventIdentification"]
        return ev["EventID"]["originalText"], ev["EventActionCode"]

    assert event("lan.login") == ("User Authentication", "E")
    assert event("refresh") == ("User Authentication", "E")
    assert event("user_create") == ("Security Alert", "C")
    assert event("device.revoked") == ("Security Alert", "D")
    assert event("totp_code_replayed") == ("Security Alert", "E")
    assert event("report.read") == ("DICOM Instances Accessed", "R")
    assert event("forward.done") == ("DICOM Instances Transferred", "R")
    assert event("report.pacs_stored") == ("Export", "R")
