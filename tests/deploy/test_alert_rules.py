"""The alert rules: valid for Prometheus (promtool check rules), each alert firing and not firing
as its unit tests say (promtool test rules), each with a runbook section in docs/observability.md,
and the Kubernetes PrometheusRule carrying exactly the same groups."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gen_prometheusrule", ROOT / "scripts" / "gen_prometheusrule.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
RULES: Path = GEN.RULES
TARGET: Path = GEN.TARGET
RULE_TESTS = ROOT / "tests" / "deploy" / "prometheus" / "relaypacs.rules.test.yml"
DOC = ROOT / "docs" / "observability.md"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus: make system-deps)",
)


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for g in groups for rule in g["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=ROOT)


@needs_promtool
def test_promtool_checks_the_rules_and_the_compose_prometheus_config() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    if config.exists():
        out = promtool("check", "config", "--syntax-only", str(config))
        assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_the_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule with its threshold moved makes promtool's unit tests fail: they test something."""
    broken = RULES.read_text(encoding="utf-8").replace(
        "relaypacs_agent_oldest_waiting_seconds) > 3600",
        "relaypacs_agent_oldest_waiting_seconds) > 36000",
    )
    assert broken != RULES.read_text(encoding="utf-8")
    rules = tmp_path / "relaypacs.rules.yml"
    rules.write_text(broken, encoding="utf-8")
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    tests["rule_files"] = [str(rules)]
    copy = tmp_path / "rules.test.yml"
    copy.write_text(yaml.safe_dump(tests), encoding="utf-8")
    out = promtool("test", "rules", str(copy))
    assert out.returncode != 0
    assert "RelayPACSAgentBacklogOld" in out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test_and_a_runbook() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fired = {
        case["alertname"]
        for group in tests
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for group in tests
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts") == []
    }
    names = [str(a["alert"]) for a in alerts()]
    assert set(names) - fired == set(), "alerts without a unit test where they fire"
    assert set(names) - quiet == set(), "alerts without a unit test where they stay quiet"
    headings = {
        line.lstrip("#").strip().lower()
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for rule in alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["summary"] and annotations["description"]
        anchor = str(annotations["runbook"]).split("#", 1)[1]
        assert anchor == str(rule["alert"]).lower()
        assert anchor in headings, f"docs/observability.md has no section {rule['alert']}"
        assert rule["labels"]["severity"] in {"warning", "critical"}  # type: ignore[index]


def test_the_kubernetes_prometheusrule_is_the_rules_file() -> None:
    assert TARGET.read_text(encoding="utf-8") == GEN.render(), (
        "deploy/k8s/base/prometheusrule.yaml is stale: run scripts/gen_prometheusrule.py"
    )
    rule = yaml.safe_load(TARGET.read_text(encoding="utf-8"))
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    kustomization = (TARGET.parent / "kustomization.yaml").read_text(encoding="utf-8")
    assert re.search(r"^\s+- prometheusrule\.yaml$", kustomization, re.M)
