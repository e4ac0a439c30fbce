"""Static checks of the container deployment (fast, no Docker engine needed): the compose file
parses and keeps its promises (healthchecks, start order, loopback ports, named volumes, secrets
refused while they hold the example's placeholders), the Dockerfiles build offline from a local
base, and the images' requirement exports match uv.lock. ``make compose-test`` runs the real
thing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from relaypacs_hub.config import HubSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
OFFLINE = ROOT / "deploy" / "compose" / "offline" / "docker-compose.offline.yml"
ENV_EXAMPLE = ROOT / "deploy" / "compose" / "env.example"
DOCKERFILES = sorted((ROOT / "deploy").rglob("*.Dockerfile"))
LOOPBACK = "${RELAYPACS_BIND_ADDRESS:-127.0.0.1}:"


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def one_shots(services: dict[str, Any]) -> set[str]:
    """Services others wait on to *complete* (bucket creation, migrations): they exit."""
    return {
        dep
        for svc in services.values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }


def test_every_long_running_service_has_a_healthcheck_and_waits_for_healthy_dependencies():
    services = load(COMPOSE)["services"]
    done = one_shots(services)
    assert done == {"migrate", "minio-init"}
    for name, svc in services.items():
        if name in done:
            assert svc.get("restart") == "no", name
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert isinstance(cond, dict), f"{name} -> {dep}: needs a condition"
            expected = "service_completed_successfully" if dep in done else "service_healthy"
            assert cond["condition"] == expected, f"{name} -> {dep}"


def test_the_hub_runs_two_replicas_behind_nginx_and_a_separate_worker():
    services = load(COMPOSE)["services"]
    hub, worker = services["hub"], services["worker"]
    assert hub["deploy"]["replicas"] == 2
    assert "ports" not in hub, "replicas are reached through nginx, never published"
    assert hub["command"] == ["relaypacs-hub", "serve"]
    assert worker["command"] == ["relaypacs-hub", "worker"]
    assert hub["image"] == worker["image"] == services["migrate"]["image"]
    assert hub["environment"]["RELAYPACS_HUB_WORKER_ENABLED"] == "false"
    assert hub["init"] is True and worker["init"] is True
    assert services["nginx"]["depends_on"] == {"hub": {"condition": "service_healthy"}}


def test_published_ports_are_on_the_loopback_unless_asked():
    services = load(COMPOSE)["services"]
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith(LOOPBACK), f"{name}: {port}"
            published += 1
    assert published >= 5


def test_state_lives_in_named_volumes():
    doc = load(COMPOSE)
    declared = set(doc["volumes"])
    for name in ("postgres", "redis", "minio", "orthanc", "prometheus", "grafana"):
        mounts = doc["services"][name]["volumes"]
        named = [m.split(":")[0] for m in mounts if not m.startswith((".", "/"))]
        assert named and set(named) <= declared, name


def test_secrets_come_from_the_env_file_and_its_placeholders_are_refused_in_production():
    text = COMPOSE.read_text()
    for var in ("RELAYPACS_DB_PASSWORD", "RELAYPACS_S3_SECRET_KEY", "RELAYPACS_ADMIN_TOKEN"):
        assert f"${{{var}:?" in text, f"{var} must be required, not defaulted"
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["RELAYPACS_ENVIRONMENT"] == "production"
    hub_env = load(COMPOSE)["services"]["hub"]["environment"]
    # The hub's settings exactly as compose would give them from the untouched example.
    env = {
        k: re.sub(r"\$\{(\w+)(?::[-?][^}]*)?\}", lambda m: example.get(m.group(1), ""), str(v))
        for k, v in hub_env.items()
    }
    with pytest.raises(ValueError, match="CHANGE-ME placeholder"):
        HubSettings.model_validate(
            {k.removeprefix("RELAYPACS_HUB_").lower(): v for k, v in env.items()}
        )


def test_the_jwt_key_is_a_compose_secret_not_an_image_layer():
    doc = load(COMPOSE)
    assert doc["services"]["hub"]["secrets"] == ["jwt_signing_key"]
    assert (
        doc["services"]["hub"]["environment"]["RELAYPACS_HUB_JWT_PRIVATE_KEY_FILE"]
        == "/run/secrets/jwt_signing_key"
    )
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and "deploy/compose/secrets" in ignored


def test_dcm4chee_profile_is_off_by_default():
    services = load(COMPOSE)["services"]
    dcm = {n for n, s in services.items() if "dcm4chee" in s.get("profiles", [])}
    assert dcm == {"dcm4chee-ldap", "dcm4chee-db", "dcm4chee-arc"}
    assert all("profiles" not in s for n, s in services.items() if n not in dcm)


def test_prometheus_scrapes_hub_and_worker_by_the_job_names_of_the_alert_rules():
    prom = load(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["relaypacs-hub"]["dns_sd_configs"][0] == {
        "names": ["hub"],
        "type": "A",
        "port": 8080,
        "refresh_interval": "30s",
    }
    assert jobs["relaypacs-worker"]["dns_sd_configs"][0]["port"] == 9464
    assert prom["rule_files"] == ["/etc/prometheus/*.rules.yml"]
    grafana = load(ROOT / "deploy/grafana/provisioning/dashboards/relaypacs.yml")
    assert grafana["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    mounts = load(COMPOSE)["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts


def test_nginx_streams_tus_bodies():
    conf = (ROOT / "deploy" / "nginx" / "relaypacs.conf").read_text()
    for directive in (
        "client_max_body_size 0;",
        "proxy_request_buffering off;",
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
    ):
        assert directive in conf


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_build_from_a_local_base(path: Path):
    text = path.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "no # syntax= (needs a registry)"
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(f.startswith("${") or f in {"pwa", "build"} for f in froms), froms


def test_images_run_as_non_root_with_a_healthcheck_and_a_ca_build_arg():
    for name in ("hub", "agent"):
        text = (ROOT / "deploy" / "docker" / f"{name}.Dockerfile").read_text()
        assert "ARG BASE_IMAGE=python:3.12-slim" in text
        assert "USER 10001:10001" in text
        assert "HEALTHCHECK" in text
        assert 'ARG EXTRA_CA_CERTS=""' in text
        assert "FROM ${NODE_IMAGE} AS pwa" in text


def test_the_offline_override_leaves_the_hub_services_alone():
    override = load(OFFLINE)["services"]
    assert not {"hub", "worker", "migrate"} & set(override)
    assert set(override) <= set(load(COMPOSE)["services"])


def test_requirement_exports_match_uv_lock():
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(uv).exists():
        pytest.fail("uv is not installed (make install puts it in ~/.local/bin)")
    out = subprocess.run(
        ["bash", str(ROOT / "deploy" / "docker" / "export-requirements.sh"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "UV": uv},
    )
    assert out.returncode == 0, out.stderr


def _has_wheel(wheels: list[str], arch: str) -> bool:
    """A pure-Python wheel, or a glibc (manylinux) one for ``arch`` that CPython 3.12 takes."""
    for w in wheels:
        if w.endswith("-none-any.whl"):
            return True
        glibc = "manylinux" in w and w.endswith(f"_{arch}.whl")
        if glibc and re.search(r"-(cp312-cp312|cp3\d+-abi3|py3-none)-", w):
            return True
    return False


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_agent_image_installs_from_wheels_on_amd64_and_arm64(arch: str):
    """No compiler in the image: every pinned requirement has a wheel for both architectures."""
    import tomllib

    lock = {p["name"]: p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    lines = (ROOT / "deploy" / "docker" / "agent-requirements.txt").read_text().splitlines()
    names = [line.split("==")[0] for line in lines if "==" in line and not line.startswith("#")]
    assert len(names) > 20
    missing = [
        n
        for n in names
        if not _has_wheel([w["url"].rsplit("/", 1)[1] for w in lock[n].get("wheels", [])], arch)
    ]
    assert missing == [], f"no {arch} wheel for Python 3.12: {missing}"
