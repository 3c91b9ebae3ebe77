"""The Kubernetes manifests, validated offline against Kubernetes' JSON schemas.

kubernetes-validate (PyPI) ships the OpenAPI-derived schemas of each Kubernetes release inside
its wheel; strict mode also refuses fields the schema doesn't know. The base is plain YAML and
is validated as it stands; the overlays are rendered by `kubectl kustomize` (kustomize is built
into kubectl), and those tests skip where kubectl is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.dockerfile import ROOT, Dockerfile

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
# The oldest release we claim to support, and the newest the installed schemas know.
VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
PRESTOP_MARGIN_S = 5


def base_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [yaml.safe_load((BASE / name).read_text()) for name in kustomization["resources"]]


def render(overlay: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: kustomize overlays cannot be rendered")
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents if doc["kind"] == kind]
    return found


def validate(documents: list[dict[str, Any]], version: str) -> None:
    for doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message}")


def api_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value") for item in container["env"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_base_manifests_match_the_schemas(version: str) -> None:
    validate(base_documents(), version)


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu", "overlays/model-volume"])
@pytest.mark.parametrize("version", VERSIONS)
def test_rendered_kustomizations_match_the_schemas(overlay: str, version: str) -> None:
    validate(render(K8S / overlay), version)


def test_schema_validation_catches_a_misspelt_field() -> None:
    deployment = one(base_documents(), "Deployment")
    api_container(deployment)["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_probes_use_ready_and_health() -> None:
    container = api_container(one(base_documents(), "Deployment"))
    ports = {port["name"] for port in container["ports"]}
    for probe, path in [("readinessProbe", "/ready"), ("livenessProbe", "/health")]:
        assert container[probe]["httpGet"]["path"] == path
        assert container[probe]["httpGet"]["port"] in ports
    assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_grace_period_outlasts_prestop_and_both_drains() -> None:
    deployment = one(base_documents(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = api_container(deployment)
    drain = float(env_of(container)["VAE_DRAIN_TIMEOUT_S"])
    sleep_command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_command[0] == "sleep"
    pre_stop = float(sleep_command[1])
    # uvicorn waits up to the drain timeout for open requests, then the app drains its queue
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 2 * drain + PRESTOP_MARGIN_S


def test_pods_run_as_the_images_non_root_user(dockerfile: Dockerfile) -> None:
    deployment = one(base_documents(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    uid = int(dockerfile.runtime.user().partition(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    hardening = api_container(deployment)["securityContext"]
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["capabilities"]["drop"] == ["ALL"]
    assert pod["enableServiceLinks"] is False, "service links inject VAE_SERVE_* settings"


def test_resources_and_the_baked_model(dockerfile: Dockerfile) -> None:
    container = api_container(one(base_documents(), "Deployment"))
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert env_of(container)["VAE_MODEL_DIR"] == dockerfile.runtime.env()["VAE_MODEL_DIR"]
    assert env_of(container)["VAE_TORCH_THREADS"] == str(container["resources"]["limits"]["cpu"])


def test_service_and_hpa_point_at_the_deployment() -> None:
    documents = base_documents()
    deployment, service = one(documents, "Deployment"), one(documents, "Service")
    hpa, pdb = one(documents, "HorizontalPodAutoscaler"), one(documents, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {port["name"] for port in api_container(deployment)["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (deployment["apiVersion"], "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_gpu_overlay_asks_for_one_gpu_and_a_cuda_image() -> None:
    documents = render(K8S / "overlays" / "gpu")
    container = api_container(one(documents, "Deployment"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(container)["VAE_DEVICE"] == "cuda"
    assert container["image"].endswith("-cuda")
    assert {"/ready", "/health"} == {
        container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")
    }


def test_model_volume_overlay_serves_from_the_claim() -> None:
    documents = render(K8S / "overlays" / "model-volume")
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    claim = one(documents, "PersistentVolumeClaim")["metadata"]["name"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    container = api_container(one(documents, "Deployment"))
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert env_of(container)["VAE_MODEL_DIR"].startswith(mount["mountPath"] + "/")
