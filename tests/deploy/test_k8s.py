"""deploy/k8s renders with `kubectl kustomize` (every overlay), every rendered object validates against
the Kubernetes schema of a recent release (kubernetes-validate, strict: no unknown field) and the KEDA
ScaledObject against KEDA's CRD (cloudcoil's generated models, with nothing of ours dropped), and the
manifests hold together: probes and resources everywhere, PDBs and HPAs for the served Deployments, the
autoscaler reading metrics the trainer really exports, GPUs where the GPU overlay says, and the
multi-node overlay's rendezvous and train-node Job."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
KUBECTL = shutil.which("kubectl")

if KUBECTL is None:
    if os.environ.get("RECFORGE_REQUIRE_TOOLS"):
        raise RuntimeError("no kubectl: the manifests' test renders them with `kubectl kustomize`")
    pytest.skip("no kubectl (`kubectl kustomize` renders deploy/k8s)", allow_module_level=True)

kubernetes_validate = pytest.importorskip("kubernetes_validate")
keda = pytest.importorskip("cloudcoil.models.keda.v1alpha1")

KUBERNETES = "1.33.0"  # a recent release, in kubernetes-validate's schemas
OVERLAYS = ["cpu", "gpu", "multinode"]


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pruned(value: Any) -> Any:
    """``value`` without empty containers: what a model dump leaves out."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_its_schema(overlay: str) -> None:
    docs = render(overlay)
    assert len(docs) >= 14
    # storage is the bucket's: pods keep only a cache, and no volume must be shared between them
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("keda.sh/"):
            model = getattr(keda, doc["kind"])
            parsed = model.model_validate(doc)  # types and required fields of KEDA's CRD
            dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
            assert _pruned(dumped) == _pruned(doc), f"{name}: a field KEDA's CRD does not know"
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_hold_together(overlay: str) -> None:
    docs = render(overlay)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {
        "recforge-api",
        "recforge-controller",
        "recforge-inference",
        "recforge-trainer",
    }
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["readinessProbe"] and container["livenessProbe"], name
            assert container["resources"]["requests"]["memory"], name
            assert "/" in container["image"] and ":" in container["image"], (
                f"{name}: image not from a registry"
            )
            sources = {
                s.get("configMapRef", s.get("secretRef", {})).get("name") for s in container["envFrom"]
            }
            assert sources == {"recforge-config", "recforge-secrets"}, name
    for served in ("recforge-api", "recforge-inference"):
        assert served in by_kind(docs, "PodDisruptionBudget")
        hpa = by_kind(docs, "HorizontalPodAutoscaler")[served]
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        service = by_kind(docs, "Service")[served]
        assert service["spec"]["selector"] == deployments[served]["spec"]["selector"]["matchLabels"]
    # only the controller Deployment runs the loop's controller, one replica of it
    config = by_kind(docs, "ConfigMap")["recforge-config"]["data"]
    assert config["RECFORGE_PIPELINE_CONTROLLER"] == "false"
    controller = deployments["recforge-controller"]
    assert controller["spec"]["replicas"] == 1 and controller["spec"]["strategy"]["type"] == "Recreate"
    assert {"name": "RECFORGE_PIPELINE_CONTROLLER", "value": "true"} in controller["spec"]["template"][
        "spec"
    ]["containers"][0]["env"]
    assert "recforge-migrate" in by_kind(docs, "Job")

    scaled = by_kind(docs, "ScaledObject")["recforge-trainer"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "recforge-trainer"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    exported = _exported_metric_names()
    asked = set(re.findall(r"recforge_[a-z_]+", trigger["metadata"]["query"]))
    assert asked and asked <= exported, (
        f"the autoscaler asks for {asked - exported}, which no trainer exports"
    )

    trainer = deployments["recforge-trainer"]["spec"]["template"]["spec"]
    gpus = trainer["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu")
    if overlay in ("gpu", "multinode"):
        assert gpus == 1 and trainer["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert scaled["spec"]["minReplicaCount"] == 0
        inference = deployments["recforge-inference"]["spec"]["template"]["spec"]["containers"][0]
        assert inference["resources"]["limits"]["nvidia.com/gpu"] == 1 and "-gpu:" in inference["image"]
    else:
        assert gpus is None and scaled["spec"]["minReplicaCount"] == 1
    if overlay == "multinode":
        _check_multinode(docs, trainer)


def _check_multinode(docs: list[dict[str, Any]], trainer: dict[str, Any]) -> None:
    """Node 0 (a trainer worker) hosts the rendezvous on its pod IP; the other nodes are an Indexed
    Job of `recforge train-node --job JOB` pods, one GPU each, with the stack's settings."""
    container = trainer["containers"][0]
    assert {"name": "rendezvous", "containerPort": 29400} in container["ports"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RECFORGE_RDZV_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["RECFORGE_RDZV_PORT"]["value"] == "29400"
    job = by_kind(docs, "Job")["recforge-train-node"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] >= 1
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    [node] = pod["containers"]
    assert node["command"] == ["recforge", "train-node", "--job", "$(RECFORGE_JOB_ID)"]
    assert node["image"] == container["image"]  # the trainer's image, from the registry
    assert node["resources"]["limits"]["nvidia.com/gpu"] == 1
    sources = {s.get("configMapRef", s.get("secretRef", {})).get("name") for s in node["envFrom"]}
    assert sources == {"recforge-config", "recforge-secrets"}
    job_id = {e["name"]: e for e in node["env"]}["RECFORGE_JOB_ID"]["valueFrom"]["configMapKeyRef"]
    assert job_id["name"] in by_kind(docs, "ConfigMap")  # the generated one, by its hashed name


def _exported_metric_names() -> set[str]:
    from prometheus_client import generate_latest

    from services.trainer.queue_metrics import QueueFigures, registry_of

    text = generate_latest(registry_of(QueueFigures(1, 0, 1, {("p", "cpu"): 1}))).decode()
    return set(re.findall(r"^(recforge_[a-z_]+)", text, re.M))
