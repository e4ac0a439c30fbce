"""Write the Grafana dashboards of deploy/grafana/dashboards/ (provisioned by docker-compose.yml):
delivery overview, per facility, per destination, agents. Generated so that every panel has the
same shape and every query names a metric the hub exports (tests/deploy/test_grafana.py checks
both, and that these files are what this script writes).

    uv run python scripts/gen_grafana.py          # rewrite
    uv run python scripts/gen_grafana.py --check  # exit 1 if the files differ
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"
DS = {"type": "prometheus", "uid": "prometheus"}


def panel(
    title: str,
    exprs: list[tuple[str, str]],
    *,
    unit: str = "short",
    kind: str = "timeseries",
    w: int = 12,
    h: int = 8,
    description: str = "",
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], variables: list[str]
) -> dict[str, Any]:
    x = y = 0
    for i, p in enumerate(panels):
        p["id"] = i + 1
        if x + p["gridPos"]["w"] > 24:
            x, y = 0, y + 8
        p["gridPos"].update({"x": x, "y": y})
        x += p["gridPos"]["w"]
    templating = [
        {
            "name": v,
            "type": "query",
            "datasource": DS,
            "query": {"query": q, "refId": "v"},
            "definition": q,
            "includeAll": True,
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "refresh": 2,
        }
        for v, q in (
            ("facility", "label_values(relaypacs_studies_committed_total, facility)"),
            ("destination", "label_values(relaypacs_forward_jobs, destination)"),
        )
        if v in variables
    ]
    return {
        "uid": uid,
        "title": title,
        "tags": ["relaypacs"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": templating},
        "panels": panels,
    }


P95 = "histogram_quantile(0.95, sum by (le, {by}) (rate(relaypacs_time_to_pacs_seconds_bucket{{{sel}}}[$__rate_interval])))"
P50 = "histogram_quantile(0.5, sum by (le, {by}) (rate(relaypacs_time_to_pacs_seconds_bucket{{{sel}}}[$__rate_interval])))"


def delivery() -> dict[str, Any]:
    return dashboard(
        "relaypacs-delivery",
        "RelayPACS: delivery overview",
        [
            panel("Hub replicas up", [('sum(up{job="relaypacs-hub"})', "hubs")], kind="stat", w=6),
            panel("Dead jobs", [("sum(relaypacs_forward_jobs{state=\"dead\"})", "dead")], kind="stat", w=6,
                  description="Forwarding jobs that failed for good: retry them from the dashboard."),
            panel("Pending jobs, oldest", [("max(relaypacs_queue_oldest_pending_age_seconds)", "oldest")],
                  kind="stat", unit="s", w=6),
            panel("Delivered, 24 h", [
                ('sum(increase(relaypacs_forward_jobs_finished_total{outcome="delivered"}[24h])) / '
                 '(sum(increase(relaypacs_forward_jobs_finished_total{outcome=~"delivered|dead"}[24h])) > 0)',
                 "success")], kind="stat", unit="percentunit", w=6,
                  description="Share of finished forwarding jobs delivered (goal: over 99%)."),
            panel("Studies committed per hour", [
                ("sum by (service_level) (increase(relaypacs_studies_committed_total[1h]))", "{{service_level}}")]),
            panel("Time to PACS, p50 and p95", [
                (P50.format(by="service_level", sel=""), "p50 {{service_level}}"),
                (P95.format(by="service_level", sel=""), "p95 {{service_level}}")], unit="s",
                  description="From the agent's receipt to the archive's confirmation (goal: under 15 min)."),
            panel("Forwarding outcomes per hour", [
                ("sum by (outcome) (increase(relaypacs_forward_jobs_finished_total[1h]))", "{{outcome}}")]),
            panel("Queue by state", [("sum by (state) (relaypacs_forward_jobs)", "{{state}}")]),
            panel("Received MB/s", [("sum(rate(relaypacs_received_bytes_total[$__rate_interval])) / 1e6", "MB/s")]),
            panel("Upload errors (tus) per minute", [
                ("sum by (status) (rate(relaypacs_tus_uploads_failed_total[$__rate_interval])) * 60", "{{status}}"),
                ('sum(rate(relaypacs_http_requests_total{status="5xx"}[$__rate_interval])) * 60', "5xx (all routes)")]),
            panel("Dependency errors per minute", [
                ("sum by (dependency) (rate(relaypacs_dependency_errors_total[$__rate_interval])) * 60",
                 "{{dependency}}")]),
            panel("TLS certificate expiry", [
                ("min by (certificate) (relaypacs_tls_certificate_expiry_timestamp_seconds) - time()",
                 "{{certificate}}")], kind="stat", unit="s"),
        ],
        [],
    )  # fmt: skip


def facilities() -> dict[str, Any]:
    sel = 'facility=~"$facility"'
    return dashboard(
        "relaypacs-facilities",
        "RelayPACS: per facility",
        [
            panel("Studies committed per hour", [
                (f"sum by (facility) (increase(relaypacs_studies_committed_total{{{sel}}}[1h]))", "{{facility}}")]),
            panel("Instances received per hour", [
                (f"sum by (facility) (increase(relaypacs_instances_received_total{{{sel}}}[1h]))", "{{facility}}")]),
            panel("Time to PACS p95", [(P95.format(by="facility", sel=sel), "{{facility}}")], unit="s"),
            panel("MB received per hour", [
                (f"sum by (facility) (increase(relaypacs_received_bytes_total{{{sel}}}[1h])) / 1e6", "{{facility}}")]),
            panel("Agents' backlog (studies)", [
                (f"sum by (facility) (relaypacs_agent_backlog_studies{{{sel}}})", "{{facility}}")]),
            panel("Files in quarantine at the agents", [
                (f"sum by (facility, reason) (relaypacs_agent_quarantined_files{{{sel}}})", "{{facility}} {{reason}}")]),
        ],
        ["facility"],
    )  # fmt: skip


def destinations() -> dict[str, Any]:
    sel = 'destination=~"$destination"'
    return dashboard(
        "relaypacs-destinations",
        "RelayPACS: per destination",
        [
            panel("Jobs by state", [(f"sum by (destination, state) (relaypacs_forward_jobs{{{sel}}})",
                                     "{{destination}} {{state}}")]),
            panel("Outcomes per hour", [
                (f"sum by (destination, outcome) (increase(relaypacs_forward_jobs_finished_total{{{sel}}}[1h]))",
                 "{{destination}} {{outcome}}")]),
            panel("Dead jobs", [(f'sum by (destination) (relaypacs_forward_jobs{{{sel}, state="dead"}})',
                                 "{{destination}}")], kind="stat", w=12),
            panel("Retries per hour", [
                (f'sum by (destination) (increase(relaypacs_forward_jobs_finished_total{{{sel}, outcome="retry"}}[1h]))',
                 "{{destination}}")]),
        ],
        ["destination"],
    )  # fmt: skip


def agents() -> dict[str, Any]:
    return dashboard(
        "relaypacs-agents",
        "RelayPACS: agents",
        [
            panel("Silent for", [("time() - max by (agent, facility) (relaypacs_agent_last_heartbeat_timestamp_seconds)",
                                  "{{agent}} ({{facility}})")], unit="s",
                  description="Time since the agent last reported (alert: over 15 minutes)."),
            panel("Last contact with the hub", [
                ("time() - max by (agent, facility) (relaypacs_agent_last_hub_contact_timestamp_seconds)",
                 "{{agent}} ({{facility}})")], unit="s"),
            panel("Backlog (studies)", [("max by (agent, facility) (relaypacs_agent_backlog_studies)",
                                         "{{agent}} ({{facility}})")]),
            panel("Backlog (bytes)", [("max by (agent, facility) (relaypacs_agent_backlog_bytes)",
                                       "{{agent}} ({{facility}})")], unit="bytes"),
            panel("Oldest waiting study", [("max by (agent, facility) (relaypacs_agent_oldest_waiting_seconds)",
                                            "{{agent}} ({{facility}})")], unit="s"),
            panel("Disk free over reserve", [
                ("max by (agent, facility) (relaypacs_agent_disk_free_bytes) / "
                 "max by (agent, facility) (relaypacs_agent_disk_reserve_bytes)", "{{agent}} ({{facility}})")],
                  unit="none", description="Under 1: the agent refuses new studies."),
            panel("Quarantined files by reason", [
                ("sum by (agent, reason) (relaypacs_agent_quarantined_files)", "{{agent}} {{reason}}")]),
            panel("Versions", [("count by (version) (relaypacs_agent_info)", "{{version}}")], kind="stat"),
        ],
        [],
    )  # fmt: skip


DASHBOARDS = {
    "relaypacs-delivery.json": delivery,
    "relaypacs-facilities.json": facilities,
    "relaypacs-destinations.json": destinations,
    "relaypacs-agents.json": agents,
}


def render() -> dict[str, str]:
    return {name: json.dumps(fn(), indent=2) + "\n" for name, fn in DASHBOARDS.items()}


def main() -> int:
    files = render()
    if "--check" in sys.argv:
        stale = [
            n
            for n, text in files.items()
            if not (OUT / n).exists() or (OUT / n).read_text() != text
        ]
        if stale:
            print(f"stale Grafana dashboards: {stale}; run scripts/gen_grafana.py", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
