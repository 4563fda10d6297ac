"""The Helm chart as the tests render it: the named value CASES, real `helm template` (cached per case),
and small helpers to pick objects out of a render or compare a render with live objects."""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path

import yaml

from harness.tools import tool_path

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "kuberay" / "chart"
PLAIN_MANIFEST = REPO / "kuberay" / "rayservice.yaml"
SERVE_CONFIG = REPO / "serve_config.yaml"
HELM_VALUES = REPO / "helm-values"
MONITORING = REPO / "monitoring"
RELEASE = "ray-serve-image-classifier"
K8S_VERSIONS = ["1.29", "1.33"]

# Every feature switched on at once, per mode: each optional template renders and validates.
ALL_ON = [
    "--set",
    "namespace.create=true",
    "--set",
    "rbac.create=true",
    "--set",
    "loadBalancer.enabled=true",
    "--set",
    "ingress.enabled=true",
    "--set",
    "ingress.host=classifier.example.com",
    "--set",
    "httpRoute.enabled=true",
    "--set",
    "httpRoute.hostnames[0]=classifier.example.com",
    "--set",
    "image.digest=sha256:" + "ab" * 32,
    "--set",
    "imagePullSecrets[0].name=regcred",
]
CASES: dict[str, list[str]] = {
    "default": [],
    "deployment": ["--set", "mode=deployment"],
    "dev": ["-f", str(HELM_VALUES / "app-dev.yaml")],
    "dev-autoscaling": [
        "-f",
        str(HELM_VALUES / "app-dev.yaml"),
        "-f",
        str(HELM_VALUES / "app-dev-autoscaling.yaml"),
    ],
    "prod": ["-f", str(HELM_VALUES / "app-prod.yaml")],
    "deployment-example": ["-f", str(HELM_VALUES / "app-deployment.yaml")],
    "deployment-local": ["-f", str(HELM_VALUES / "app-deployment-local.yaml")],
    "rayservice-all-on": ALL_ON
    + [
        "--set",
        "ray.gcsFaultTolerance.enabled=true",
        "--set",
        "ray.gcsFaultTolerance.redisAddress=redis.redis.svc:6379",
        "--set",
        "ray.gcsFaultTolerance.redisPasswordSecret.name=redis-password",
        "--set",
        "ray.auth.secretName=ray-token",
    ],
    # KubeRay brings its own Gateway and HTTPRoute in this mode: no front door of the chart's.
    "rayservice-incremental": [
        "--set",
        "namespace.create=true",
        "--set",
        "rbac.create=true",
        "--set",
        "ray.upgradeStrategy.type=NewClusterWithIncrementalUpgrade",
        "--set",
        "ray.upgradeStrategy.clusterUpgradeOptions.gatewayClassName=istio",
        "--set",
        "ray.upgradeStrategy.clusterUpgradeOptions.stepSizePercent=25",
        "--set",
        "ray.upgradeStrategy.clusterUpgradeOptions.intervalSeconds=30",
    ],
    "deployment-all-on": ALL_ON
    + [
        "--set",
        "mode=deployment",
        "--set",
        "autoscaling.enabled=false",
        "--set",
        "secret.existingSecret=ray-token",
    ],
}


def helm_path() -> str:
    return tool_path("helm")


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm_path(), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
    return result


@functools.cache
def render_text(case: str) -> str:
    return run_helm("template", RELEASE, str(CHART), *CASES[case]).stdout


def render(case: str) -> list[dict]:
    return [copy.deepcopy(doc) for doc in _parsed(case)]


def render_with(*args: str, release: str = RELEASE) -> list[dict]:
    """`helm template` with extra arguments (for checks outside the named CASES)."""
    return [doc for doc in yaml.safe_load_all(run_helm("template", release, str(CHART), *args).stdout) if doc]


@functools.cache
def _parsed(case: str) -> tuple[dict, ...]:
    return tuple(doc for doc in yaml.safe_load_all(render_text(case)) if doc)


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template inside a workload or RayService."""
    if doc["kind"] == "RayService":
        cluster = doc["spec"]["rayClusterConfig"]
        specs = [("head", cluster["headGroupSpec"]["template"]["spec"])]
        specs += [(g["groupName"], g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
        return specs
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [(doc["metadata"]["name"], doc["spec"]["template"]["spec"])]
    return []


def is_subset(expected, actual, path: str = "") -> list[str]:
    """Where the rendered value is not in the live object (the API server adds defaults, so only the
    rendered fields are compared)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: {actual!r} is not a mapping"]
        return [d for k, v in expected.items() for d in is_subset(v, actual.get(k), f"{path}.{k}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: {actual!r} != {expected!r}"]
        return [
            d
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for d in is_subset(e, a, f"{path}[{i}]")
        ]
    if expected != actual and str(expected) != str(actual):
        return [f"{path}: {actual!r} != {expected!r}"]
    return []


def serve_service_name(rendered: list[dict], mode: str) -> str:
    if mode == "rayservice":
        return f"{by_kind(rendered, 'RayService')[0]['metadata']['name']}-serve-svc"  # KubeRay's name
    [svc] = [
        s for s in by_kind(rendered, "Service") if any(p.get("name") == "serve" for p in s["spec"]["ports"])
    ]
    return svc["metadata"]["name"]
