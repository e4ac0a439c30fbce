"""The Grafana dashboards (deploy/grafana/dashboards/, provisioned by docker-compose.yml) are
what scripts/gen_grafana.py writes, and every metric they or the alert rules name is one the hub
exports: a renamed metric cannot leave an empty panel or an alert that never fires."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.hub.authfix import auth_settings, hub_client

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "relaypacs.rules.yml"
NAME = re.compile(r"\brelaypacs_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _exprs() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text())
        found[path.name] = [t["expr"] for p in doc["panels"] for t in p["targets"]] + [
            v["definition"] for v in doc["templating"]["list"]
        ]
    rules = yaml.safe_load(RULES.read_text())
    found[RULES.name] = [str(r["expr"]) for g in rules["groups"] for r in g["rules"]]
    return found


def test_the_dashboards_are_generated_and_complete() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_grafana.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    names = {p.stem for p in DASHBOARDS.glob("*.json")}
    assert names == {
        "relaypacs-delivery",
        "relaypacs-facilities",
        "relaypacs-destinations",
        "relaypacs-agents",
    }
    for path in DASHBOARDS.glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["uid"] == path.stem and doc["panels"]
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids))
        for p in doc["panels"]:
            assert p["datasource"]["uid"] == "prometheus" and p["targets"], p["title"]


async def test_every_metric_a_dashboard_or_rule_names_is_exported(tmp_path: Path) -> None:
    async with hub_client(auth_settings(tmp_path)) as (_app, client):
        text = (await client.get("/metrics")).text
    exported = {f.name for f in text_string_to_metric_families(text)}
    assert "relaypacs_studies_committed" in exported

    def known(name: str) -> bool:
        if name in exported:
            return True
        return any(name.endswith(s) and name.removesuffix(s) in exported for s in SUFFIXES)

    unknown = {
        f"{where}: {name}"
        for where, exprs in _exprs().items()
        for expr in exprs
        for name in NAME.findall(expr)
        if not known(name)
    }
    assert unknown == set()
    # And the check can fail: a misspelt metric is caught.
    assert not known("relaypacs_studies_comitted_total")
