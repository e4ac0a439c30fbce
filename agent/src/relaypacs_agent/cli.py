"""``relaypacs-agent``: take studies in at a facility and relay them to the hub."""

from __future__ import annotations

import json

import typer

from relaypacs_agent.config import AgentSettings
from relaypacs_agent.logging import configure_logging

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)


@app.command()
def run() -> None:
    """Watch the inbox and relay what arrives to the hub, until Ctrl-C or SIGTERM.

    Settings come from RELAYPACS_AGENT_* variables (see the README).

    Example:

        RELAYPACS_AGENT_INBOX=/srv/dicom-in relaypacs-agent run
    """
    from relaypacs_agent.runner import Agent

    settings = AgentSettings()
    configure_logging(settings.log_level, settings.log_json)
    Agent(settings).run()


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show what the agent holds: instances, quarantine, and the state of each study.

    Example:

        relaypacs-agent status --json
    """
    from relaypacs_agent.status import read_status

    settings = AgentSettings()
    data = read_status(settings.db_path)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if not data["exists"]:
        typer.echo(f"no agent database at {data['database']} yet")
        return
    t = data["totals"]
    typer.echo(
        f"{t['instances']} instance(s) in {t['studies']} study(ies); "
        f"{t['duplicates']} duplicate(s); {t['quarantined']} quarantined"
    )
    for s in data["studies"]:
        dests = ", ".join(f"{d['destination']}:{d['state']}" for d in s["destinations"]) or "-"
        typer.echo(
            f"  {s['study_instance_uid']}  {s['state']:<10} {s['service_level']:<7} "
            f"{s['instances']:>5} inst  {s['bytes'] / 1e6:8.1f} MB  {dests}"
            + (
                f"  last error: {s['last_error']}"
                if s["last_error"] and s["state"] == "receiving"
                else ""
            )
        )
    for reason, n in sorted(t["quarantine_reasons"].items()):
        typer.echo(f"  quarantine: {n} x {reason}")


if __name__ == "__main__":
    app()
