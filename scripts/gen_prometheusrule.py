"""Write deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/relaypacs.rules.yml: the same
alert groups as a Prometheus Operator PrometheusRule (tests/deploy/test_alert_rules.py checks the
two stay equal). Run after editing the rules: uv run python scripts/gen_prometheusrule.py"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "relaypacs.rules.yml"
TARGET = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/relaypacs.rules.yml by scripts/gen_prometheusrule.py:\n"
    "# edit the rules file, then run the script. Runbook: docs/observability.md.\n"
)


def prometheus_rule() -> dict[str, Any]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "relaypacs", "labels": {"app.kubernetes.io/name": "relaypacs-hub"}},
        "spec": {"groups": groups},
    }


def render() -> str:
    body = yaml.safe_dump(prometheus_rule(), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
