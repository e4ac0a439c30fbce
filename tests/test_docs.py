"""Every command and every setting is documented in the README, and every --help has an example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from relaypacs_agent.cli import app as agent_app
from relaypacs_agent.config import AgentSettings
from relaypacs_dev.cli import app as dev_app
from relaypacs_hub.cli import app as hub_app
from relaypacs_hub.config import HubSettings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
APPS = {"relaypacs-agent": agent_app, "relaypacs-hub": hub_app, "relaypacs-dev": dev_app}


def _commands() -> list[tuple[str, typer.Typer, str]]:
    out = []
    for prog, app in APPS.items():
        for cmd in app.registered_commands:
            name = cmd.name or (cmd.callback.__name__.replace("_", "-") if cmd.callback else "")
            out.append((prog, app, name))
        for group in app.registered_groups:  # typer sub-apps: `relaypacs-hub audit verify`
            sub = group.typer_instance
            for cmd in sub.registered_commands if sub else []:
                name = cmd.name or (cmd.callback.__name__.replace("_", "-") if cmd.callback else "")
                out.append((prog, app, f"{group.name} {name}"))
    return out


@pytest.mark.parametrize(("prog", "app", "name"), _commands(), ids=lambda v: str(v))
def test_command_documented_with_example(prog: str, app: typer.Typer, name: str) -> None:
    assert f"`{prog} {name}`" in README, f"{prog} {name} is missing from the README"
    result = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output or "example" in result.output.lower(), (
        f"{prog} {name} --help shows no example"
    )


@pytest.mark.parametrize(
    ("prefix", "settings"), [("RELAYPACS_HUB_", HubSettings), ("RELAYPACS_AGENT_", AgentSettings)]
)
def test_every_setting_documented(prefix: str, settings: type) -> None:
    documented = set(re.findall(rf"`({prefix}[A-Z0-9_]+)`", README))
    fields = {prefix + name.upper() for name in settings.model_fields}
    assert fields - documented == set(), "settings missing from the README"
    assert documented - fields == set(), "README documents settings that do not exist"
    for name, field in settings.model_fields.items():
        assert field.description, f"{name} has no description"


def test_readme_states_the_two_commands() -> None:
    assert "`make demo`" in README and "`make test`" in README
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci
