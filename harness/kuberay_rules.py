"""What the KubeRay operator (v1.6.2, the version this project runs) refuses in a RayService beyond its
CRD schema, and the serve Service it builds, restated in Python so that rendered manifests can be
checked without an operator.

Each rule names the Go function in ray-operator/controllers/ray/ it restates (utils/validation.go,
common/service.go). A RayService that breaks a rule is marked `Ready=False, reason=ValidationFailed` by
the operator and never gets a cluster, so the chart must not render one. Only what the chart can trip or
depends on is here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re

# controllers/ray/utils/constant.go: MaxRayClusterNameLength (53) - 6 for the "-xxxxx" cluster suffix.
MAX_RAYSERVICE_NAME_LENGTH = 47
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
INITIALIZING_TIMEOUT = "ray.io/initializing-timeout"
_GO_DURATION = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def go_duration_seconds(text: str) -> float | None:
    """time.ParseDuration: a sequence of <number><unit>; None when Go would not parse it."""
    if not text or text in ("0", "+0", "-0"):
        return 0.0 if text else None
    sign = -1 if text.startswith("-") else 1
    rest, total = text.lstrip("+-"), 0.0
    while rest:
        match = _GO_DURATION.match(rest)
        if not match:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(3)]
        rest = rest[match.end() :]
    return sign * total


def _metadata_errors(metadata: dict) -> list[str]:
    """ValidateRayServiceMetadata and validateInitializingTimeout."""
    errors, name = [], metadata["name"]
    if len(name) > MAX_RAYSERVICE_NAME_LENGTH:
        errors.append(f"name {name!r} is longer than {MAX_RAYSERVICE_NAME_LENGTH} characters")
    if len(name) > 63 or not DNS_1035_LABEL.match(name):
        errors.append(f"name {name!r} is not a DNS-1035 label")
    timeout = (metadata.get("annotations") or {}).get(INITIALIZING_TIMEOUT, "")
    if timeout:
        seconds = go_duration_seconds(timeout)
        if seconds is None and re.fullmatch(r"[-+]?\d+", timeout):
            seconds = int(timeout)
        if seconds is None or seconds <= 0:
            errors.append(
                f"{INITIALIZING_TIMEOUT} {timeout!r} is not a positive duration or number of seconds"
            )
    return errors


def _autoscaler_v2(cluster: dict) -> bool:
    """IsAutoscalingV2Enabled, or the head's RAY_enable_autoscaler_v2 env var (KubeRay < 1.4 style)."""
    if (cluster.get("autoscalerOptions") or {}).get("version") == "v2":
        return True
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    return any(
        e.get("name") == "RAY_enable_autoscaler_v2" and e.get("value") in ("1", "true")
        for e in head.get("env", [])
    )


def _cluster_errors(cluster: dict, annotations: dict) -> list[str]:
    """ValidateRayClusterSpec (the parts the chart sets) and validateWorkerGroupIdleTimeout."""
    errors = []
    autoscaling = cluster.get("enableInTreeAutoscaling") is True
    for group in cluster.get("workerGroupSpecs", []):
        name = group["groupName"]
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            errors.append(
                f"worker group {name}: minReplicas and maxReplicas are required without autoscaling"
            )
        if low is not None and high is not None and low > high:
            errors.append(f"worker group {name}: minReplicas {low} > maxReplicas {high}")
        if "idleTimeoutSeconds" in group:
            if group["idleTimeoutSeconds"] < 0:
                errors.append(f"worker group {name}: negative idleTimeoutSeconds")
            if not _autoscaler_v2(cluster):
                errors.append(
                    f"worker group {name}: idleTimeoutSeconds is set, but autoscaler v2 is not enabled"
                )
        if (
            autoscaling
            and _autoscaler_v2(cluster)
            and group["template"]["spec"].get("restartPolicy") not in (None, "", "Never")
        ):
            errors.append(f"worker group {name}: restartPolicy must be Never or unset with autoscaler v2")
    if cluster.get("gcsFaultToleranceOptions") and "redis-password" in cluster["headGroupSpec"].get(
        "rayStartParams", {}
    ):
        errors.append("redis-password in rayStartParams together with gcsFaultToleranceOptions")
    if cluster.get("gcsFaultToleranceOptions") and "ray.io/external-storage-namespace" in annotations:
        errors.append("ray.io/external-storage-namespace annotation together with gcsFaultToleranceOptions")
    return errors


def _spec_errors(spec: dict) -> list[str]:
    """ValidateRayServiceSpec and ValidateClusterUpgradeOptions (the RayServiceIncrementalUpgrade gate is
    on by default in v1.6.2)."""
    errors = []
    strategy = spec.get("upgradeStrategy") or {}
    if strategy.get("type") not in (None, "NewCluster", "NewClusterWithIncrementalUpgrade", "None"):
        errors.append(f"upgradeStrategy.type {strategy.get('type')!r} is invalid")
    if spec.get("rayClusterDeletionDelaySeconds", 0) < 0:
        errors.append("negative rayClusterDeletionDelaySeconds")
    if strategy.get("type") == "NewClusterWithIncrementalUpgrade":
        options = strategy.get("clusterUpgradeOptions")
        if spec["rayClusterConfig"].get("enableInTreeAutoscaling") is not True:
            errors.append("NewClusterWithIncrementalUpgrade needs the Ray autoscaler")
        if not options:
            errors.append("NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions")
        else:
            if not 0 <= options.get("maxSurgePercent", 100) <= 100:  # the CRD defaults it to 100
                errors.append("maxSurgePercent must be within 0..100")
            if not 0 <= options.get("stepSizePercent", -1) <= 100:
                errors.append("stepSizePercent must be within 0..100")
            if options.get("intervalSeconds", 0) <= 0:
                errors.append("intervalSeconds must be greater than 0")
            if not options.get("gatewayClassName"):
                errors.append("gatewayClassName is required")
    head_service = spec["rayClusterConfig"]["headGroupSpec"].get("headService") or {}
    if (head_service.get("metadata") or {}).get("name"):
        errors.append("headGroupSpec.headService.metadata.name must not be set")
    return errors


def rayservice_errors(rayservice: dict) -> list[str]:
    """Everything in the RayService that KubeRay v1.6.2's validateRayService would refuse."""
    annotations = rayservice["metadata"].get("annotations") or {}
    return (
        _metadata_errors(rayservice["metadata"])
        + _cluster_errors(rayservice["spec"]["rayClusterConfig"], annotations)
        + _spec_errors(rayservice["spec"])
    )


def incremental_upgrade(spec: dict) -> bool:
    """IsIncrementalUpgradeEnabled (the feature gate is on by default in v1.6.2)."""
    return (spec.get("upgradeStrategy") or {}).get("type") == "NewClusterWithIncrementalUpgrade"


def gateway_names(rayservice: dict) -> tuple[str, str]:
    """The Gateway and HTTPRoute KubeRay creates for NewClusterWithIncrementalUpgrade, in the RayService's
    namespace (common/association.go: RayServiceGatewayNamespacedName, RayServiceHTTPRouteNamespacedName;
    createGateway gives the Gateway one HTTP listener on port 80)."""
    name = rayservice["metadata"]["name"]
    return f"{name}-gateway", f"{name}-httproute"


def serve_service(rayservice: dict, cluster_name: str) -> dict:
    """The Service KubeRay's BuildServeServiceForRayService makes for the RayCluster `cluster_name`:
    `<rayservice>-serve-svc` (with NewClusterWithIncrementalUpgrade `<raycluster>-serve-svc`, one per
    cluster), from spec.serveService when set (ignored with incremental upgrades), selecting that
    cluster's pods labelled ray.io/serve=true, with the head container's `serve`/`serve-*` ports (a
    serveService port of the same name wins)."""
    spec = rayservice["spec"]
    incremental = incremental_upgrade(spec)
    head = spec["rayClusterConfig"]["headGroupSpec"]
    custom = None if incremental else spec.get("serveService")
    ports = [
        {"name": p["name"], "port": p["containerPort"]}
        for p in head["template"]["spec"]["containers"][0].get("ports", [])
        if p.get("name") == "serve" or p.get("name", "").startswith("serve-")
    ]
    if custom:
        by_name = {p["name"]: p for p in custom.get("spec", {}).get("ports", [])}
        ports = [by_name.get(p["name"], p) for p in ports] or list(by_name.values())
    base = cluster_name if incremental else rayservice["metadata"]["name"]
    custom = custom or {}
    return {
        "metadata": {
            "name": (custom.get("metadata") or {}).get("name") or f"{base}-serve-svc",
            "labels": {**(custom.get("metadata") or {}).get("labels", {}), "ray.io/serve": f"{base}-serve"},
            "annotations": (custom.get("metadata") or {}).get("annotations", {}),
        },
        "spec": {
            **{k: v for k, v in custom.get("spec", {}).items() if k not in ("selector", "ports")},
            "type": custom.get("spec", {}).get("type") or head.get("serviceType") or "ClusterIP",
            "selector": {"ray.io/cluster": cluster_name, "ray.io/serve": "true"},
            "ports": ports,
        },
    }


def cluster_spec_hash(cluster_spec: dict) -> str:
    """What KubeRay compares between a RayService and its RayClusters (utils.
    GenerateHashWithoutReplicasAndWorkersToDelete): the rayClusterConfig without the worker groups'
    replicas, minReplicas, maxReplicas and workersToDelete, the pod templates' tolerations and scheduling
    gates, and upgradeStrategy. Equal hashes: shouldUpdateCluster and shouldPrepareNewCluster do nothing."""
    spec = copy.deepcopy(cluster_spec)
    spec.pop("upgradeStrategy", None)
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    for group in groups:
        for key in ("tolerations", "schedulingGates"):
            group["template"]["spec"].pop(key, None)
    for group in spec.get("workerGroupSpecs", []):
        for key in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(key, None)
        group.get("scaleStrategy", {}).pop("workersToDelete", None)
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()
