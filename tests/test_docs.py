"""The documentation stays true: the generated reference matches the code, links resolve, every
setting has a description, every command's --help has an example, the README stays short."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from relaypacs_agent.config import AgentSettings
from relaypacs_hub.config import HubSettings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _gendocs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gendocs", ROOT / "scripts" / "gendocs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENDOCS = _gendocs()


@pytest.mark.parametrize("name", sorted(GENDOCS.RENDERERS))
def test_generated_reference_is_up_to_date(name: str) -> None:
    path = ROOT / "docs" / name
    assert path.exists(), f"docs/{name} is missing: run `make docs`"
    assert path.read_text(encoding="utf-8") == GENDOCS.RENDERERS[name](), (
        f"docs/{name} no longer matches the code: run `make docs` and commit the result"
    )


@pytest.mark.parametrize(("prog", "app", "name"), GENDOCS.all_commands(), ids=lambda v: str(v))
def test_command_help_has_example(prog: str, app: typer.Typer, name: str) -> None:
    result = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "example" in result.output.lower(), f"{prog} {name} --help shows no example"
    assert f"## `{prog} {name}`" in (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("settings", [HubSettings, AgentSettings])
def test_every_setting_has_a_description(settings: type) -> None:
    missing = [name for name, field in settings.model_fields.items() if not field.description]
    assert missing == [], f"settings without a description: {missing}"


def test_configuration_reference_names_every_setting_once() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for prefix, settings in (("RELAYPACS_HUB_", HubSettings), ("RELAYPACS_AGENT_", AgentSettings)):
        rows = re.findall(rf"^\| `({prefix}[A-Z0-9_]+)` \|", text, re.M)
        assert sorted(rows) == sorted(prefix + n.upper() for n in settings.model_fields)


def test_settings_named_in_docs_exist() -> None:
    """A variable named anywhere in the README or docs/ is one the hub or agent reads."""
    known = {"RELAYPACS_HUB_" + n.upper() for n in HubSettings.model_fields}
    known |= {"RELAYPACS_AGENT_" + n.upper() for n in AgentSettings.model_fields}
    texts = [README] + [p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")]
    named = {m for t in texts for m in re.findall(r"\bRELAYPACS_(?:HUB|AGENT)_[A-Z0-9_]+\b", t)}
    assert named - known == set(), "docs name settings that do not exist"


def _links(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"\]\(([^)#\s]+\.md)(#[^)]*)?\)", text)


def _anchors(path: Path) -> set[str]:
    heads = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_links_between_documents_resolve() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in _links(doc):
            dest = (doc.parent / target).resolve()
            assert dest.exists(), f"{doc.name} links to {target}, which does not exist"
            if anchor:
                assert anchor[1:] in _anchors(dest), f"{doc.name}: no {anchor} in {target}"


def test_readme_is_short_and_lists_every_document() -> None:
    assert len(README.splitlines()) < 200
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in README, f"the README does not point at docs/{doc.name}"


def test_readme_states_the_two_commands() -> None:
    assert "`make demo`" in README and "`make test`" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_nothing_points_outside_the_repository() -> None:
    """Users of the project have only the repository: no file may send them to the planning
    folder beside it (the pattern is assembled so that this file does not name it either)."""
    outside = "../" + "shared/"
    files = subprocess.run(
        ["git", "grep", "-l", "-F", "-e", outside, "--", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert files == []


@pytest.mark.parametrize("name", sorted(GENDOCS.SOURCES))
def test_generated_sources_are_up_to_date(name: str) -> None:
    """The dashboard's wire types are the hub's OpenAPI, by openapi-typescript."""
    if not (ROOT / "pwa/node_modules/.bin/openapi-typescript").exists() and not os.environ.get(
        "CI"
    ):
        pytest.skip("needs the PWA's npm packages (make npm-deps)")
    path = ROOT / name
    assert path.exists(), f"{name} is missing: run `make docs`"
    assert path.read_text(encoding="utf-8") == GENDOCS.SOURCES[name](), (
        f"{name} no longer matches the hub's OpenAPI: run `make docs` and commit the result"
    )
