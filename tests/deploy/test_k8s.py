"""The Kubernetes manifests build with kustomize and validate against the Kubernetes schemas,
offline. A real cluster cannot run on this machine: what a cluster would check beyond the schemas
(operators' admission, images pulling, probes answering) is not tested here."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"

# Custom resources of operators (their schemas are not in kubernetes-validate): the fields the
# manifests rely on, checked by hand.
CUSTOM = {
    ("postgresql.cnpg.io/v1", "Cluster"): ["spec.instances", "spec.storage.size"],
    ("keda.sh/v1alpha1", "ScaledObject"): ["spec.scaleTargetRef.name", "spec.triggers"],
    ("keda.sh/v1alpha1", "TriggerAuthentication"): ["spec.secretTargetRef"],
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector", "spec.endpoints"],
    ("monitoring.coreos.com/v1", "PrometheusRule"): ["spec.groups"],
    ("monitoring.coreos.com/v1", "PodMonitor"): ["spec.selector", "spec.podMetricsEndpoints"],
}

# kubectl (with kustomize inside) is on these development machines; stock Debian bookworm ships
# only kubernetes-client 1.20, whose kustomize is too old for these files.
pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (kustomize) is not installed"
)


def build(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _get(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for key in dotted.split("."):
        node = node[key]
    return node


def validate(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM:
        for path in CUSTOM[key]:
            assert _get(doc, path), f"{doc['kind']} {doc['metadata']['name']}: {path} is empty"
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["base", "overlays/example"])
def test_manifests_build_and_validate(overlay: str) -> None:
    docs = build(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "PodDisruptionBudget", "Job", "Ingress", "ScaledObject"} <= kinds
    for doc in docs:
        validate(doc)


def test_hub_shape_for_high_availability() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in build("overlays/example")}
    hub = docs[("Deployment", "relaypacs-hub")]
    assert hub["spec"]["replicas"] >= 2
    container = hub["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["image"].endswith(":0.1.0")
    pdb = docs[("PodDisruptionBudget", "relaypacs-hub")]
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= hub["spec"]["selector"]["matchLabels"].items()
    )
    worker = docs[("Deployment", "relaypacs-worker")]
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "worker"
    ingress = docs[("Ingress", "relaypacs-hub")]["metadata"]["annotations"]
    # tus PATCH bodies stream through the proxy: no size cap, no buffering.
    assert ingress["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert ingress["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    config = next(
        d for (kind, name), d in docs.items() if kind == "ConfigMap" and "hub-config" in name
    )
    assert config["data"]["RELAYPACS_HUB_ENVIRONMENT"] == "production"


def test_validation_catches_a_broken_manifest() -> None:
    """The schema check is real: a wrong type or an unknown field fails it."""
    hub = next(d for d in build("base") if d["kind"] == "Deployment")
    wrong_type = copy.deepcopy(hub)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong_type)
    unknown = copy.deepcopy(hub)
    unknown["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(unknown)
