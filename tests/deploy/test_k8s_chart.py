"""The Helm chart (kuberay/chart) and the plain RayService manifest, checked with real tools.

Real Helm 3 (`helm lint --strict`, `helm template`) for every mode x values file; every built-in object
validated by kubernetes-validate (strict, Kubernetes 1.29 and 1.33); every custom resource validated
against its CRD's openAPIV3Schema from ../shared/crds with unknown fields rejected; the values schema's
negative cases; kuberay/rayservice.yaml == `helm template` with defaults; serveConfigV2 == serve_config.yaml.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from harness.charts import (
    CASES,
    CHART,
    HELM_VALUES,
    K8S_VERSIONS,
    MONITORING,
    PLAIN_MANIFEST,
    RELEASE,
    REPO,
    SERVE_CONFIG,
    by_kind,
    one,
    pod_specs,
    render,
    render_text,
    render_with,
    run_helm,
)
from harness.kuberay_rules import cluster_spec_hash, gateway_names, rayservice_errors, serve_service
from harness.netpol import Peer, admits, selects as netpol_selects
from harness.tools import CRDS_DIR

# ----------------------------------------------------------------------------------------- helm itself


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict_passes(case):
    result = run_helm("lint", "--strict", str(CHART), *CASES[case])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", CASES)
def test_helm_template_renders_objects(case):
    docs = render(case)
    assert docs, f"{case}: nothing rendered"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()


def test_plain_manifest_is_helm_template_with_the_dev_values():
    body = "".join(
        line
        for line in PLAIN_MANIFEST.read_text().splitlines(keepends=True)
        if not line.startswith("# Generated")
        and not line.startswith("# Quick start")
        and not line.startswith("#   kubectl")
    )
    assert body == render_text("dev"), (
        "kuberay/rayservice.yaml differs from `helm template` with helm-values/app-dev.yaml: "
        "run scripts/k8s/render.sh"
    )


def namespaces_named(node, path="") -> list[str]:
    """Every place a manifest names a namespace: namespace fields and selectors, `<svc>.<ns>.svc` hosts."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("namespace", "namespaceSelector"):
                found.append(f"{path}.{key}")
            found += namespaces_named(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += namespaces_named(value, f"{path}[{i}]")
    elif isinstance(node, str) and re.search(r"\.[a-z0-9-]+\.svc\b", node):
        found.append(f"{path}: {node}")
    return found


def test_plain_manifest_is_a_quick_start_that_names_no_namespace():
    """`kubectl apply -n <any> -f kuberay/rayservice.yaml` must work as it is: nothing in it names the
    operator's, the monitoring stack's or an ingress controller's namespace, nor its own."""
    docs = [d for d in yaml.safe_load_all(PLAIN_MANIFEST.read_text()) if d]
    service = one(docs, "RayService")
    assert service["apiVersion"] == "ray.io/v1"
    assert not by_kind(docs, "NetworkPolicy")
    for doc in docs:
        assert namespaces_named(doc) == [], (doc["kind"], namespaces_named(doc))
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    hosts = {"RAY_GRAFANA_HOST", "RAY_GRAFANA_IFRAME_HOST", "RAY_PROMETHEUS_HOST"}
    assert not hosts & {e["name"] for e in head["env"]}
    # The check sees what the default values name.
    assert any("namespaceSelector" in p for d in render("default") for p in namespaces_named(d))
    assert any(".monitoring.svc" in p for d in render("default") for p in namespaces_named(d))


# ------------------------------------------------------------------------------ serveConfigV2 == file


def serve_config_v2(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def test_default_serve_config_v2_is_the_repo_serve_config_verbatim():
    text = one(render("default"), "RayService")["spec"]["serveConfigV2"]
    assert yaml.safe_load(text) == yaml.safe_load(SERVE_CONFIG.read_text())
    assert text.rstrip("\n") == SERVE_CONFIG.read_text().rstrip("\n")


def test_chart_reads_serve_config_through_a_symlink_to_the_repo_file():
    link = CHART / "files" / "serve_config.yaml"
    assert link.is_symlink() and link.resolve() == SERVE_CONFIG.resolve()


def apply_overrides(config: dict, overrides: list[dict]) -> dict:
    """Independent implementation of the chart's deploymentOverrides, for checking it."""

    def deep_merge(dst: dict, src: dict) -> None:
        for key, value in src.items():
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                deep_merge(dst[key], value)
            else:
                dst[key] = copy.deepcopy(value)

    config = copy.deepcopy(config)
    for override in overrides:
        matches = [
            d
            for app in config["applications"]
            for d in app.get("deployments", [])
            if d["name"] == override["name"]
        ]
        assert matches, override["name"]
        for dep in matches:
            for key in override.get("unset", []):
                dep.pop(key, None)
            deep_merge(dep, override.get("set", {}))
    return config


def test_prod_serve_config_v2_is_the_file_plus_exactly_the_listed_overrides():
    overrides = yaml.safe_load((HELM_VALUES / "app-prod.yaml").read_text())["serveConfig"][
        "deploymentOverrides"
    ]
    expected = apply_overrides(yaml.safe_load(SERVE_CONFIG.read_text()), overrides)
    rendered = serve_config_v2(render("prod"))
    assert rendered == expected
    model = next(d for d in rendered["applications"][0]["deployments"] if d["name"] == "ImageClassifier")
    assert model["autoscaling_config"]["min_replicas"] == 3
    assert model["autoscaling_config"]["max_replicas"] == 10
    assert "num_replicas" not in model
    # Everything not overridden (args, limits, user_config) is still the file's.
    assert (
        rendered["applications"][0]["args"]
        == yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["args"]
    )


def test_override_of_an_unknown_deployment_fails_the_render():
    result = run_helm(
        "template", RELEASE, str(CHART), "--set", "serveConfig.deploymentOverrides[0].name=Nope", check=False
    )
    assert result.returncode != 0
    assert 'no deployment named "Nope"' in result.stderr


@pytest.mark.parametrize("case", [c for c in CASES if "deployment" not in c])
def test_serve_config_v2_is_accepted_by_ray_serve_schema(case):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config_v2(render(case)))


def test_serve_schema_check_would_catch_a_bad_override():
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    config = apply_overrides(
        yaml.safe_load(SERVE_CONFIG.read_text()),
        [{"name": "ImageClassifier", "set": {"autoscaling_config": {"min_replicas": 3, "max_replicas": 10}}}],
    )
    with pytest.raises(ValidationError):  # num_replicas left in beside autoscaling_config
        ServeDeploySchema.model_validate(config)


# ---------------------------------------------------------------------- built-in objects: k8s schemas

BUILTIN_GROUPS = {
    "v1",
    "apps/v1",
    "autoscaling/v2",
    "policy/v1",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
}


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_builtin_objects_validate_strictly(case, k8s):
    checked = 0
    for doc in render(case):
        if doc["apiVersion"] in CRD_KINDS_BY_API:
            continue
        assert doc["apiVersion"] in BUILTIN_GROUPS, f"unexpected apiVersion {doc['apiVersion']}"
        try:
            kubernetes_validate.validate(doc, k8s, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{case}: no Kubernetes {k8s} schema for {doc['kind']}: {exc}")
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{case}: {doc['kind']}/{doc['metadata']['name']} invalid for {k8s}: {exc.message} "
                f"at {list(exc.caught.absolute_path)}"
            )
        checked += 1
    assert checked


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("case", [c for c in CASES if "deployment" not in c])
def test_rayservice_pod_templates_validate_as_kubernetes_pod_templates(case, k8s):
    cluster = one(render(case), "RayService")["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        wrapped = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check"},
            "template": template,
        }
        try:
            kubernetes_validate.validate(wrapped, k8s, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{case}: pod template invalid for {k8s}: {exc.message} at {list(exc.caught.absolute_path)}"
            )


def test_kubernetes_validate_rejects_unknown_fields_and_kinds():
    """The validator is strict: a typo'd field and an unknown kind both fail."""
    deployment = one(render("deployment"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.33", strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Nonsense", "metadata": {"name": "x"}}, "1.33", strict=True
        )


# ------------------------------------------------------------------ custom resources: real CRD schemas


def _strict(schema: dict) -> dict:
    """A CRD structural schema as the API server applies it: unknown fields rejected unless
    x-kubernetes-preserve-unknown-fields; int-or-string accepts both; embedded resources keep
    apiVersion/kind/metadata."""
    schema = dict(schema)
    if schema.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema.pop("anyOf", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema:
        schema["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if schema.get("x-kubernetes-embedded-resource"):
            for key in ("apiVersion", "kind"):
                schema["properties"].setdefault(key, {"type": "string"})
            schema["properties"].setdefault("metadata", {"type": "object"})
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema and not schema.get("x-kubernetes-int-or-string"):
            schema[key] = [_strict(s) for s in schema[key]]
    if (
        schema.get("type") == "object"
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    if not CRDS_DIR.is_dir():
        pytest.skip(f"CRDs not found at {CRDS_DIR}: set SHARED_CRDS_DIR")
    validators = {}
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = _strict(version["schema"]["openAPIV3Schema"])
            # ObjectMeta is validated by the API server itself, not by the CRD schema.
            schema["properties"]["metadata"] = {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                        "maxLength": 63,
                    },
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "additionalProperties": False,
            }
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


CRD_KINDS_BY_API = {
    "ray.io/v1": {"RayService", "RayCluster"},
    "gateway.networking.k8s.io/v1": {"HTTPRoute"},
    "monitoring.coreos.com/v1": {"PodMonitor", "ServiceMonitor", "PrometheusRule"},
}


def crd_errors(doc: dict) -> list[str]:
    validator = crd_validators().get((doc["apiVersion"], doc["kind"]))
    assert validator, f"no CRD in {CRDS_DIR} for {doc['apiVersion']} {doc['kind']}"
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("case", CASES)
def test_custom_resources_validate_against_their_crds(case):
    custom = [d for d in render(case) if d["apiVersion"] in CRD_KINDS_BY_API]
    if "deployment" not in case:
        assert any(d["kind"] == "RayService" for d in custom)
    for doc in custom:
        assert not crd_errors(doc), f"{case}: {doc['kind']}/{doc['metadata']['name']}: {crd_errors(doc)}"


def test_crd_validation_rejects_unknown_and_mistyped_fields():
    service = one(render("default"), "RayService")
    assert not crd_errors(service)
    typo = copy.deepcopy(service)
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert any("maxReplica" in e for e in crd_errors(typo))
    wrong_type = copy.deepcopy(service)
    wrong_type["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] = "yes"
    assert crd_errors(wrong_type)
    bad_enum = copy.deepcopy(service)
    bad_enum["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "password"
    assert crd_errors(bad_enum)
    # int-or-string and preserve-unknown-fields are honoured, not over-rejected.
    ok = copy.deepcopy(service)
    ok["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]["cpu"] = 2
    assert not crd_errors(ok)


# ------------------------------------------------- what KubeRay v1.6.2 refuses beyond its CRD schema

RAYSERVICE_CASES = [c for c in CASES if "deployment" not in c]


@pytest.mark.parametrize("case", RAYSERVICE_CASES)
def test_rayservice_passes_kuberay_validation(case):
    assert rayservice_errors(one(render(case), "RayService")) == []


def test_kuberay_rules_catch_what_the_operator_refuses():
    service = one(render("default"), "RayService")
    assert rayservice_errors(service) == []
    v1 = copy.deepcopy(service)
    v1["spec"]["rayClusterConfig"]["autoscalerOptions"]["version"] = "v1"
    v1["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["idleTimeoutSeconds"] = 60
    assert any("autoscaler v2 is not enabled" in e for e in rayservice_errors(v1))
    long_name = copy.deepcopy(service)
    long_name["metadata"]["name"] = "a" * 48
    assert any("longer than 47" in e for e in rayservice_errors(long_name))
    digit = copy.deepcopy(service)
    digit["metadata"]["name"] = "1-classifier"
    assert any("DNS-1035" in e for e in rayservice_errors(digit))
    timeout = copy.deepcopy(service)
    timeout["metadata"].setdefault("annotations", {})["ray.io/initializing-timeout"] = "0s"
    assert any("initializing-timeout" in e for e in rayservice_errors(timeout))
    for good in ("15m", "1h30m", "900"):
        timeout["metadata"]["annotations"]["ray.io/initializing-timeout"] = good
        assert rayservice_errors(timeout) == [], good
    prod = one(render("prod"), "RayService")
    prod["metadata"].setdefault("annotations", {})["ray.io/external-storage-namespace"] = "shared"
    assert any("external-storage-namespace" in e for e in rayservice_errors(prod))


@pytest.mark.parametrize("enabled,version", [(True, "v2"), (True, "v1"), (False, "v2")])
def test_worker_idle_timeout_is_rendered_only_for_autoscaler_v2(enabled, version):
    """validateWorkerGroupIdleTimeout: a worker group's idleTimeoutSeconds needs autoscaler v2; v1 reads
    autoscalerOptions.idleTimeoutSeconds (off: neither exists)."""
    service = one(
        render_with(
            "--set",
            f"ray.autoscaler.enabled={str(enabled).lower()}",
            "--set",
            f"ray.autoscaler.version={version}",
        ),
        "RayService",
    )
    assert rayservice_errors(service) == []
    cluster = service["spec"]["rayClusterConfig"]
    [workers] = cluster["workerGroupSpecs"]
    assert ("idleTimeoutSeconds" in workers) is (enabled and version == "v2")
    assert ("autoscalerOptions" in cluster) is enabled
    if enabled:
        assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 120


@pytest.mark.parametrize("case", RAYSERVICE_CASES)
def test_shipped_values_leave_the_terminal_initializing_timeout_unset(case):
    """KubeRay's markFailedOnInitializingTimeout is final (isInitializingTimeout stops all reconciling and
    the clusters are deleted): no values file the repo ships may let a slow first start end the service."""
    annotations = one(render(case), "RayService")["metadata"].get("annotations") or {}
    assert "ray.io/initializing-timeout" not in annotations


@pytest.mark.parametrize("value", ["30m", "1h30m", "1800"])
def test_initializing_timeout_is_rendered_when_opted_in(value):
    service = one(render_with("--set-string", f"ray.initializingTimeout={value}"), "RayService")
    assert service["metadata"]["annotations"]["ray.io/initializing-timeout"] == value
    assert rayservice_errors(service) == []


def disruptions_allowed(pdb: dict, ready_pods: int, owner_has_scale: bool) -> int:
    """The disruption controller's arithmetic (kubernetes v1.34 pkg/controller/disruption:
    getExpectedPodCount, updatePdbStatus, failSafe): maxUnavailable and percentages need the pods'
    owner's scale subresource, and without one the PDB is left at 0 allowed disruptions."""
    spec = pdb["spec"]
    if "maxUnavailable" in spec or isinstance(spec.get("minAvailable"), str):
        if not owner_has_scale:
            return 0  # "... does not implement the scale subresource": failSafe
        expected = ready_pods
        if "maxUnavailable" in spec:
            unavailable = spec["maxUnavailable"]
            if isinstance(unavailable, str):
                unavailable = -(-int(unavailable.rstrip("%")) * expected // 100)  # rounded up
            desired = max(expected - unavailable, 0)
        else:
            desired = -(-int(spec["minAvailable"].rstrip("%")) * expected // 100)
    else:
        desired = spec["minAvailable"]
    return max(ready_pods - desired, 0)


def test_disruption_model_matches_the_defect():
    """The old worker PDB (maxUnavailable 1 on RayCluster-owned pods) allowed no eviction at all."""
    old = {"spec": {"maxUnavailable": 1}}
    assert disruptions_allowed(old, ready_pods=5, owner_has_scale=False) == 0
    assert disruptions_allowed(old, ready_pods=5, owner_has_scale=True) == 1
    assert disruptions_allowed({"spec": {"minAvailable": 2}}, ready_pods=2, owner_has_scale=False) == 0


@pytest.mark.parametrize(
    "args,fewest",
    [
        ([], 1),  # default: minReplicas 1
        (["-f", str(HELM_VALUES / "app-prod.yaml")], 2),
        (["--set", "ray.worker.minReplicas=4", "--set", "ray.worker.replicas=4"], 4),
        (["--set", "ray.autoscaler.enabled=false", "--set", "ray.worker.replicas=3"], 3),  # fixed count
        (["--set", "ray.autoscaler.enabled=false", "--set", "ray.worker.replicas=9"], 5),  # clamped to max
    ],
    ids=["default", "prod", "min4", "fixed3", "fixed-clamped"],
)
def test_worker_pdb_lets_a_drain_proceed_at_the_groups_smallest_size(args, fewest):
    docs = render_with(*args)
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if fewest < 2:
        assert pdbs == []  # a budget below two workers could only block drains
        return
    [pdb] = pdbs
    assert "maxUnavailable" not in pdb["spec"] and isinstance(pdb["spec"]["minAvailable"], int)
    worker_labels = one(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"][
        "metadata"
    ]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    assert disruptions_allowed(pdb, ready_pods=fewest, owner_has_scale=False) == 1
    assert disruptions_allowed(pdb, ready_pods=fewest + 3, owner_has_scale=False) == 4


def test_deployment_pdb_keeps_max_unavailable():
    pdb = one(render("deployment"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert disruptions_allowed(pdb, ready_pods=3, owner_has_scale=True) == 1


GCS_FT = [
    "--set",
    "ray.gcsFaultTolerance.enabled=true",
    "--set",
    "ray.gcsFaultTolerance.redisAddress=redis:6379",
]
INCREMENTAL = [
    "--set",
    "ray.upgradeStrategy.type=NewClusterWithIncrementalUpgrade",
    "--set",
    "ray.upgradeStrategy.clusterUpgradeOptions.gatewayClassName=istio",
    "--set",
    "ray.upgradeStrategy.clusterUpgradeOptions.stepSizePercent=25",
    "--set",
    "ray.upgradeStrategy.clusterUpgradeOptions.intervalSeconds=30",
]


def test_prod_gcs_state_is_keyed_by_each_clusters_uid():
    """Without externalStorageNamespace (or the annotation) KubeRay's configureGCSFaultTolerance uses the
    RayCluster's UID: the old and new cluster of an upgrade write, and clean up, separate Redis keys."""
    service = one(render("prod"), "RayService")
    assert "externalStorageNamespace" not in service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert "ray.io/external-storage-namespace" not in (service["metadata"].get("annotations") or {})


@pytest.mark.parametrize(
    "strategy",
    [["--set", "ray.upgradeStrategy.type=NewCluster"], INCREMENTAL],
    ids=["NewCluster", "incremental"],
)
def test_a_shared_redis_namespace_is_refused_where_upgrades_run_two_clusters(strategy):
    result = run_helm(
        "template",
        RELEASE,
        str(CHART),
        *GCS_FT,
        *strategy,
        "--set",
        "ray.gcsFaultTolerance.externalStorageNamespace=classifier",
        check=False,
    )
    assert result.returncode != 0
    assert "externalStorageNamespace" in result.stderr and "cleanup" in result.stderr, result.stderr


def test_a_fixed_redis_namespace_is_rendered_when_no_upgrade_runs_a_second_cluster():
    service = one(
        render_with(
            *GCS_FT,
            "--set",
            "ray.upgradeStrategy.type=None",
            "--set",
            "ray.gcsFaultTolerance.externalStorageNamespace=classifier",
        ),
        "RayService",
    )
    gcs = service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert gcs["externalStorageNamespace"] == "classifier"
    assert rayservice_errors(service) == []


def quantity(text) -> float:
    """A Kubernetes quantity as a number (CPUs, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text)).groups()
    return float(number) * units.get(unit, 1)


def pod_requests(spec: dict, init: list[dict] = ()) -> dict[str, float]:
    """What the scheduler reserves for a pod: the sum over its containers, or an init container's request
    if larger."""
    totals = {}
    for resource in ("cpu", "memory"):
        running = sum(quantity(c["resources"]["requests"].get(resource, 0)) for c in spec["containers"])
        totals[resource] = max([running] + [quantity(c["resources"]["requests"][resource]) for c in init])
    return totals


# kube-system and the operator on the one-node test cluster: CoreDNS, metrics-server, KubeRay (~300m).
NODE = {"cpu": 2.0, "memory": 24 * 2**30}
SYSTEM = {"cpu": 0.3, "memory": 1 * 2**30}
# KubeRay's wait-gcs-ready init container on every worker (common/pod.go: fixed 200m / 256Mi).
WAIT_GCS_READY = [{"resources": {"requests": {"cpu": "200m", "memory": "256Mi"}}}]


def test_dev_values_fit_one_2_cpu_node_through_a_new_cluster_upgrade():
    cluster = one(render("dev"), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is False  # no autoscaler sidecar in the head pod
    head = pod_requests(cluster["headGroupSpec"]["template"]["spec"])
    [group] = cluster["workerGroupSpecs"]
    worker = pod_requests(group["template"]["spec"], WAIT_GCS_READY)
    assert (head["cpu"], worker["cpu"]) == (0.2, 0.5)
    assert (head["memory"], worker["memory"]) == (2 * 2**30, 3 * 2**30)
    one_cluster = {r: head[r] + group["maxReplicas"] * worker[r] for r in head}
    for resource in ("cpu", "memory"):  # blue/green: both clusters at once
        assert SYSTEM[resource] + 2 * one_cluster[resource] <= NODE[resource], resource
    assert group["rayStartParams"]["num-cpus"] == "2"  # Ray's logical CPUs for serve_config.yaml


def test_local_deployment_values_fit_one_2_cpu_node_through_a_rolling_update():
    docs = render("deployment-local")
    deployment = one(docs, "Deployment")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 4)
    # An idle pod uses ~100 % of its request here: a lower target would never scale back down.
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] > 100
    assert not by_kind(docs, "Ingress")
    assert not [s for s in by_kind(docs, "Service") if s["spec"].get("type") == "LoadBalancer"]
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["RAY_NUM_CPUS"] == "2"
    assert container["resources"]["requests"]["memory"] == "2560Mi"
    assert container["resources"]["limits"]["memory"] == "3584Mi"
    surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    pods = hpa["spec"]["maxReplicas"] + surge
    per_pod = pod_requests(spec)
    for resource in ("cpu", "memory"):
        assert SYSTEM[resource] + pods * per_pod[resource] <= NODE[resource], resource
    assert "ONE node of 2 CPUs" in (HELM_VALUES / "app-deployment-local.yaml").read_text().split("\nmode:")[0]


CHART_NAME = "ray-serve-image-classifier"


@pytest.mark.parametrize(
    "release,extra,name",
    [
        (CHART_NAME + "-" + "a" * 20, [], CHART_NAME + "-" + "a" * 20),  # 47: the longest KubeRay takes
        ("classifier-eu-west", [], "classifier-eu-west-" + CHART_NAME),  # 45 with the chart name appended
        ("my-classifier-prod-eu", ["--set", "fullnameOverride=classifier"], "classifier"),
    ],
)
def test_rayservice_names_kuberay_accepts_render(release, extra, name):
    service = one(render_with(*extra, release=release), "RayService")
    assert service["metadata"]["name"] == name
    assert rayservice_errors(service) == []


@pytest.mark.parametrize(
    "release,extra,message",
    [
        (CHART_NAME + "-" + "a" * 21, [], "(48 characters), but KubeRay accepts at most 47"),
        # Not containing the chart name, the release gets "-ray-serve-image-classifier" appended: 21 + 27.
        ("my-classifier-prod-eu", [], "(48 characters), but KubeRay accepts at most 47"),
        ("x", ["--set", "fullnameOverride=" + "c" * 48], "(48 characters), but KubeRay accepts at most 47"),
        ("1st", [], "DNS-1035"),
    ],
)
def test_rayservice_names_kuberay_refuses_fail_the_render(release, extra, message):
    result = run_helm("template", release, str(CHART), *extra, check=False)
    assert result.returncode != 0
    assert message in result.stderr and "fullnameOverride" in result.stderr, result.stderr


def test_long_names_are_fine_in_deployment_mode():
    docs = render_with("--set", "mode=deployment", release="my-classifier-prod-eu")
    assert one(docs, "Deployment")["metadata"]["name"] == "my-classifier-prod-eu-" + CHART_NAME


# ---------------------------------------------------------------------------- values.schema.json


def test_values_schema_is_generated_and_current():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "k8s" / "gen_values_schema.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, "values.schema.json is stale: run scripts/k8s/render.sh"


def test_chart_readme_values_table_is_current():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "k8s" / "gen_chart_readme.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, "kuberay/chart/README.md is stale: run scripts/k8s/render.sh"


BAD_VALUES = {
    "unknown mode": (["--set", "mode=statefulset"], "mode"),
    "negative deployment replicas": (["--set", "deployment.replicas=-1"], "deployment.replicas"),
    "negative worker replicas": (["--set", "ray.worker.replicas=-3"], "ray.worker.replicas"),
    "negative worker minReplicas": (["--set", "ray.worker.minReplicas=-1"], "ray.worker.minReplicas"),
    "worker min > max": (
        ["--set", "ray.worker.minReplicas=6", "--set", "ray.worker.maxReplicas=5"],
        "ray.worker.minReplicas",
    ),
    "hpa min > max": (["--set", "autoscaling.minReplicas=11"], "autoscaling.minReplicas"),
    "hpa min zero": (["--set", "autoscaling.minReplicas=0"], "autoscaling.minReplicas"),
    "hpa target zero": (
        ["--set", "autoscaling.targetCPUUtilizationPercentage=0"],
        "targetCPUUtilizationPercentage",
    ),
    "typo in a key": (["--set", "ray.worker.maxReplica=3"], "maxReplica"),
    "unknown upgrade strategy": (["--set", "ray.upgradeStrategy.type=InPlace"], "ray.upgradeStrategy.type"),
    "incremental upgrade without options": (
        ["--set", "ray.upgradeStrategy.type=NewClusterWithIncrementalUpgrade"],
        "clusterUpgradeOptions",
    ),
    "gcs ft without redis": (["--set", "ray.gcsFaultTolerance.enabled=true"], "redisAddress"),
    "bad auth mode": (["--set", "ray.auth.mode=password"], "ray.auth.mode"),
    # KubeRay refuses a zero or unparsable ray.io/initializing-timeout (validateInitializingTimeout).
    "zero initializing timeout": (["--set", "ray.initializingTimeout=0s"], "initializingTimeout"),
    "unparsable initializing timeout": (
        ["--set", "ray.initializingTimeout=ten minutes"],
        "initializingTimeout",
    ),
    "string replicas": (["--set-string", "deployment.replicas=three"], "deployment.replicas"),
}


@pytest.mark.parametrize("name", BAD_VALUES)
def test_values_schema_rejects_bad_values(name):
    args, mentioned = BAD_VALUES[name]
    result = run_helm("template", RELEASE, str(CHART), *args, check=False)
    assert result.returncode != 0, f"{name}: accepted"
    assert "schema" in result.stderr and mentioned in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "ray.worker.minReplicas=5", "--set", "ray.worker.maxReplicas=5"],
        ["--set", "ray.worker.minReplicas=0", "--set", "ray.worker.maxReplicas=100"],
        [
            "--set",
            "mode=deployment",
            "--set",
            "autoscaling.minReplicas=10",
            "--set",
            "autoscaling.maxReplicas=10",
        ],
        ["--set", "mode=deployment", "--set", "deployment.replicas=0", "--set", "autoscaling.enabled=false"],
    ],
    ids=["worker min==max", "worker 0..100", "hpa min==max", "deployment scaled to 0"],
)
def test_values_schema_accepts_boundaries(args):
    run_helm("template", RELEASE, str(CHART), *args)


def test_every_value_is_documented():
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+)", text, flags=re.M))
    values = yaml.safe_load(text)

    def paths(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in documented:
                continue
            assert isinstance(value, dict) and value, f"values.yaml: {path} has no '## @param {path}'"
            yield from paths(value, path + ".")
        yield from ()

    list(paths(values))
    for path in documented:
        node = values
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"## @param {path} documents no value"
            node = node[part]


# ------------------------------------------------------------------------- what the issue asks for


def test_rayservice_cluster_shape():
    service = one(render("default"), "RayService")
    spec = service["spec"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    [workers] = cluster["workerGroupSpecs"]
    assert 0 < workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    container = workers["template"]["spec"]["containers"][0]
    assert "kill -s TERM" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    drain = int(
        {e["name"]: e.get("value") for e in container["env"]}["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]
    )
    # preStop pause + node drain + process shutdown fit in the grace period.
    assert workers["template"]["spec"]["terminationGracePeriodSeconds"] >= 15 + drain + 20
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    assert "gcsFaultToleranceOptions" not in cluster


def test_prod_enables_gcs_fault_tolerance_with_password_from_a_secret():
    cluster = one(render("prod"), "RayService")["spec"]["rayClusterConfig"]
    gcs = cluster["gcsFaultToleranceOptions"]
    assert re.fullmatch(r"\S+:\d+", gcs["redisAddress"])
    assert gcs["redisPassword"]["valueFrom"]["secretKeyRef"] == {"name": "ray-gcs-redis", "key": "password"}
    assert "value" not in gcs["redisPassword"]


def test_metrics_port_is_named_and_dashboard_env_is_set():
    cluster = one(render("default"), "RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    for container, params in (
        (head, cluster["headGroupSpec"]["rayStartParams"]),
        (worker, cluster["workerGroupSpecs"][0]["rayStartParams"]),
    ):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == 8080 and params["metrics-export-port"] == "8080"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["TORCH_HOME"] == "/home/ray/.cache/torch"
    env = {e["name"]: e.get("value") for e in head["env"]}
    for name in ("RAY_GRAFANA_HOST", "RAY_PROMETHEUS_HOST", "RAY_GRAFANA_IFRAME_HOST"):
        assert env[name].startswith("http"), name
    assert env["RAY_PROMETHEUS_NAME"] == "Prometheus"
    deployment = one(render("deployment"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in deployment["ports"]}["metrics"] == 8080


def test_deployment_mode_is_the_seed_literally():
    docs = render("deployment")
    assert not by_kind(docs, "RayService")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert "serve run" in " ".join(container["command"]) and "${SERVE_CONFIG_FILE}" in " ".join(
        container["command"]
    )
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_AUTH_MODE"] == "token"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    token_dir, token_file = env["RAY_AUTH_TOKEN_PATH"].rsplit("/", 1)
    secret_volume = volumes[mounts[token_dir]]["secret"]
    assert secret_volume["secretName"] == one(docs, "Secret")["metadata"]["name"]
    assert secret_volume["items"] == [{"key": "auth_token", "path": token_file}]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert {"scaleUp", "scaleDown"} <= hpa["spec"]["behavior"].keys()
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    pdb = one(docs, "PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    service = next(
        s
        for s in by_kind(docs, "Service")
        if s["spec"].get("type") == "ClusterIP" and s["spec"].get("clusterIP") != "None"
    )
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert len(by_kind(docs, "ConfigMap")) == 2 and one(docs, "Secret")  # settings, Serve config
    without_hpa = one(render("deployment-all-on"), "Deployment")
    assert without_hpa["spec"]["replicas"] == 3


def test_ingress_body_size_is_above_the_apps_own_limit():
    app_limit = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["args"]["limits"][
        "max_body_bytes"
    ]
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    for case in ("rayservice-all-on", "deployment-example"):
        ingress = one(render(case), "Ingress")
        size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        number, unit = re.fullmatch(r"(\d+)([kmgKMG]?)", size).groups()
        assert int(number) * units[unit.lower()] > app_limit, size


@pytest.mark.parametrize("case", CASES)
def test_routes_point_at_the_serve_service(case):
    """Every HTTPRoute / Ingress backend is a Service that will exist, on its HTTP port: the chart's own, or
    the one KubeRay builds for the serving RayCluster (BuildServeServiceForRayService)."""
    docs = render(case)
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    for service in by_kind(docs, "RayService"):
        built = serve_service(service, cluster_name=f"{service['metadata']['name']}-abcde")
        services[built["metadata"]["name"]] = built
    backends = [
        (ref["name"], ref["port"])
        for r in by_kind(docs, "HTTPRoute")
        for ref in [r["spec"]["rules"][0]["backendRefs"][0]]
    ]
    backends += [
        (b["name"], b["port"]["number"])
        for i in by_kind(docs, "Ingress")
        for b in [i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]]
    ]
    for name, port in backends:
        assert name in services, (case, name)
        assert port in [p["port"] for p in services[name]["spec"]["ports"]], (case, name, port)
    if "all-on" in case:
        assert len(backends) == 2


# PSS "restricted" (https://kubernetes.io/docs/concepts/security/pod-security-standards/), checked here.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def pss_restricted_violations(spec: dict) -> list[str]:
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(flag)
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {kinds}")
    pod_ctx = spec.get("securityContext", {})
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        ctx = container.get("securityContext", {})
        name = container["name"]
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities not dropped")
        if set(ctx.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities added")
        if not (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))):
            problems.append(f"{name}: runAsNonRoot")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccomp {seccomp}")
        if container.get("ports") and any(p.get("hostPort") for p in container["ports"]):
            problems.append(f"{name}: hostPort")
    return problems


@pytest.mark.parametrize("case", CASES)
def test_pods_meet_pod_security_restricted_with_writable_ray_dirs(case):
    docs = render(case)
    specs = [s for d in docs for s in pod_specs(d)]
    assert specs
    for where, spec in specs:
        assert not pss_restricted_violations(spec), (case, where, pss_restricted_violations(spec))
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            for path in ("/tmp", "/tmp/ray", "/dev/shm"):
                assert "emptyDir" in volumes[mounts[path]], (where, path)
            assert container["resources"]["limits"]["memory"]
    service = by_kind(docs, "RayService")
    if service:
        autoscaler = service[0]["spec"]["rayClusterConfig"].get("autoscalerOptions")
        if autoscaler:
            assert not pss_restricted_violations({"containers": [{"name": "autoscaler", **autoscaler}]})


def test_pss_checker_catches_violations():
    spec = copy.deepcopy(pod_specs(one(render("deployment"), "Deployment"))[0][1])
    assert not pss_restricted_violations(spec)
    spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(pss_restricted_violations(spec)) == 2


def test_namespace_gets_pss_labels_when_created():
    namespace = one(render("rayservice-all-on"), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("case", CASES)
def test_service_accounts_mount_tokens_only_where_the_autoscaler_needs_one(case):
    docs = render(case)
    accounts = {a["metadata"]["name"]: a for a in by_kind(docs, "ServiceAccount")}
    for where, spec in (s for d in docs for s in pod_specs(d)):
        account = accounts[spec["serviceAccountName"]]
        needs_api = (
            where == "head"
            and by_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"]
        )
        assert spec["automountServiceAccountToken"] is bool(needs_api), (case, where)
        assert account["automountServiceAccountToken"] is bool(needs_api), (case, where)
    for role in by_kind(docs, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert not {"create", "delete", "deletecollection"} & set(rule["verbs"])


PROMETHEUS = Peer(namespace="monitoring", labels={"app.kubernetes.io/name": "prometheus"})


def pod_monitor_ports(name: str) -> list[str]:
    doc = yaml.safe_load((MONITORING / f"podmonitor-{name}.yaml").read_text())
    return [endpoint["port"] for endpoint in doc["spec"]["podMetricsEndpoints"]]


def ray_pod(docs: list[dict], group: str = "head") -> tuple[dict[str, str], dict[str, int], dict]:
    """(labels, container ports by name, pod spec) of a Ray pod as KubeRay creates it from the template:
    the template's labels plus KubeRay's ray.io/* ones, the ports as declared (KubeRay adds `metrics`
    only when missing; the chart always declares it)."""
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    spec = (
        cluster["headGroupSpec"]
        if group == "head"
        else next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == group)
    )
    template = spec["template"]
    labels = {
        **template["metadata"]["labels"],
        "ray.io/is-ray-node": "yes",
        "ray.io/node-type": "head" if group == "head" else "worker",
    }
    ports = {
        p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
    }
    return labels, ports, template["spec"]


@pytest.mark.parametrize("case", RAYSERVICE_CASES)
def test_prometheus_can_scrape_every_port_the_ray_podmonitors_name(case):
    """monitoring/podmonitor-ray-*.yaml scrape container ports by name: each must be declared on the pod
    (a missing name is no target at all, so its alert can never fire) and admitted by the policies."""
    docs = render(case)
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    policies = by_kind(docs, "NetworkPolicy")
    labels, ports, spec = ray_pod(docs)
    autoscaler = cluster["enableInTreeAutoscaling"]
    for port in pod_monitor_ports("ray-head"):
        if port == "as-metrics" and not autoscaler:
            assert port not in ports  # no sidecar, no target (and no down alert)
            continue
        assert admits(policies, labels, ports, port, PROMETHEUS), (case, port)
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert int(env["DASHBOARD_METRIC_PORT"]) == ports["dash-metrics"]
    if autoscaler:
        env = {e["name"]: e["value"] for e in cluster["autoscalerOptions"]["env"]}
        assert int(env["AUTOSCALER_METRIC_PORT"]) == ports["as-metrics"]
    worker_labels, worker_ports, _ = ray_pod(docs, cluster["workerGroupSpecs"][0]["groupName"])
    for port in pod_monitor_ports("ray-workers"):
        assert admits(policies, worker_labels, worker_ports, port, PROMETHEUS), (case, port)


@pytest.mark.parametrize("case", RAYSERVICE_CASES)
def test_the_head_is_in_the_serve_service_and_the_operator_reaches_its_proxy(case):
    """The head stays in the serve Service (excludeHeadPodFromServeSvc false): in a NewCluster upgrade
    it is the new cluster's ready endpoint when KubeRay moves the Service, before the workers' probes
    pass. KubeRay labels it only when its GET of the head's :serve/-/healthz answers, so the policies
    admit the operator's namespace (kuberay-system) to the head's serve port."""
    docs = render(case)
    assert one(docs, "RayService")["spec"]["excludeHeadPodFromServeSvc"] is False
    labels, ports, _ = ray_pod(docs)
    policies = by_kind(docs, "NetworkPolicy")
    assert admits(policies, labels, ports, "serve", Peer(namespace="kuberay-system")), case
    if policies:
        assert not admits(policies, labels, ports, "serve", Peer(namespace="elsewhere")), case


def test_scrape_check_fails_for_undeclared_or_unadmitted_ports():
    docs = render("default")
    policies = by_kind(docs, "NetworkPolicy")
    labels, ports, _ = ray_pod(docs)
    assert admits(policies, labels, ports, "dash-metrics", PROMETHEUS)
    undeclared = {k: v for k, v in ports.items() if k != "dash-metrics"}
    assert not admits(policies, labels, undeclared, "dash-metrics", PROMETHEUS)
    assert not admits(policies, labels, ports, "dash-metrics", Peer(namespace="elsewhere"))
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            rule["ports"] = [p for p in rule.get("ports", [{}]) if p.get("port") != "dash-metrics"] or [
                {"port": "nothing"}
            ]
    assert not admits(policies, labels, ports, "dash-metrics", PROMETHEUS)


@pytest.mark.parametrize(
    "front_door",
    [
        ["--set", "httpRoute.enabled=true"],
        ["--set", "ingress.enabled=true"],
        ["--set", "loadBalancer.enabled=true"],
    ],
    ids=["httpRoute", "ingress", "lb"],
)
def test_incremental_upgrade_refuses_front_doors_that_would_point_at_nothing(front_door):
    """With NewClusterWithIncrementalUpgrade KubeRay's BuildServeService names the serve Service after each
    RayCluster and ignores spec.serveService: <name>-serve-svc never exists."""
    result = run_helm("template", RELEASE, str(CHART), *INCREMENTAL, *front_door, check=False)
    assert result.returncode != 0
    assert f"its own Gateway {RELEASE}-gateway" in result.stderr, result.stderr
    service = one(render("rayservice-incremental"), "RayService")
    assert serve_service(service, f"{RELEASE}-abcde")["metadata"]["name"] == f"{RELEASE}-abcde-serve-svc"


def test_incremental_upgrade_lets_kuberays_gateway_proxy_reach_the_serve_port():
    gateway, _ = gateway_names(one(render("rayservice-incremental"), "RayService"))
    proxy = Peer(namespace="app", labels={"gateway.networking.k8s.io/gateway-name": gateway})
    for case, admitted in (("rayservice-incremental", True), ("default", False)):
        docs = render(case)
        policies = by_kind(docs, "NetworkPolicy")
        for group in ("head", "cpu-workers"):
            labels, ports, _ = ray_pod(docs, group)
            assert admits(policies, labels, ports, "serve", proxy) is admitted, (case, group)


@functools.cache
def notes(*args: str) -> str:
    """NOTES.txt as `helm install` prints it (rendered through a copy of the chart, since `helm template`
    leaves NOTES out)."""
    copy_dir = Path(tempfile.mkdtemp()) / "chart"
    shutil.copytree(CHART, copy_dir, symlinks=False)
    (copy_dir / "templates" / "notes-preview.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '    {{- include "classifier.notes" . | nindent 4 }}\n'
    )
    out = run_helm(
        "template", RELEASE, str(copy_dir), "-n", "app", "-s", "templates/notes-preview.yaml", *args
    )
    shutil.rmtree(copy_dir.parent)
    return yaml.safe_load(out.stdout)["data"]["notes"]


@pytest.mark.parametrize("case", ["default", "deployment", "rayservice-incremental", "rayservice-all-on"])
def test_notes_name_services_that_will_exist(case):
    docs = render(case)
    text = notes(*CASES[case])
    services = {s["metadata"]["name"] for s in by_kind(docs, "Service")}
    for service in by_kind(docs, "RayService"):
        services.add(serve_service(service, "$CLUSTER")["metadata"]["name"])
        if case == "rayservice-incremental":
            gateway, route = gateway_names(service)
            assert gateway in text and route in text
            assert "activeServiceStatus.rayClusterName" in text
    named = re.findall(r"port-forward \"?svc/([^\s\"]+)\"? 8000:serve", text)
    assert named and set(named) <= services, (named, services)


@pytest.mark.parametrize("case", ["default", "dev", "prod", "deployment", "rayservice-all-on"])
def test_notes_print_the_gcs_ft_uninstall_order_only_when_gcs_ft_is_on(case):
    """With GCS FT the RayService must go before the release (its Redis cleanup Job needs the release's
    ServiceAccount): NOTES name this release's RayService and the label KubeRay puts on its clusters."""
    docs = render(case)
    text = notes(*CASES[case])
    services = by_kind(docs, "RayService")
    gcs_ft = bool(services) and "gcsFaultToleranceOptions" in services[0]["spec"]["rayClusterConfig"]
    assert ("Uninstall (GCS fault tolerance is on)" in text) == gcs_ft, text
    if gcs_ft:
        name = services[0]["metadata"]["name"]
        block = text.split("Uninstall (GCS fault tolerance is on)", 1)[1]
        assert f"delete rayservice {name}\n" in block
        assert f"-l ray.io/originated-from-cr-name={name} " in block
        assert (
            block.index("delete rayservice")
            < block.index("wait --for=delete")
            < block.index(f"uninstall {RELEASE}")
        )


OPERATIONS = REPO / "docs" / "OPERATIONS.md"


def json_patch_replace(doc: dict, operations: list[dict]) -> dict:
    """RFC 6902 `replace` (what the runbook uses): the path must already exist."""
    doc = copy.deepcopy(doc)
    for operation in operations:
        assert operation["op"] == "replace", operation
        *parents, last = operation["path"].lstrip("/").split("/")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        exists = key in (range(len(node)) if isinstance(node, list) else node)
        assert exists, f"{operation['path']} does not exist"
        node[key] = operation["value"]
    return doc


def test_scaling_runbook_changes_the_worker_bounds_where_kuberay_reads_them():
    """docs/OPERATIONS.md's two steps: `helm upgrade` alone changes nothing on the running cluster (KubeRay's
    hash leaves the bounds out), so the runbook patches the RayCluster; the patch hits the chart's worker
    group and KubeRay neither reverts it nor starts an upgrade over it."""
    runbook = OPERATIONS.read_text().split("**Changing the worker bounds of a running RayService**", 1)[1]
    operations = json.loads(re.search(r"-p='(\[.*?\])'", runbook, re.DOTALL).group(1))
    helm_sets = dict(re.findall(r"--set (ray\.worker\.\w+)=(\d+)", runbook.split("```", 2)[1]))
    running = one(render("prod"), "RayService")["spec"]["rayClusterConfig"]
    # constructRayClusterForRayService: the RayCluster's spec is the RayService's rayClusterConfig.
    patched = json_patch_replace({"spec": running}, operations)["spec"]
    group = patched["workerGroupSpecs"][0]
    assert group["groupName"] == "cpu-workers"
    assert {
        "ray.worker.minReplicas": str(group["minReplicas"]),
        "ray.worker.maxReplicas": str(group["maxReplicas"]),
    } == helm_sets
    assert (group["minReplicas"], group["maxReplicas"]) != (
        running["workerGroupSpecs"][0]["minReplicas"],
        running["workerGroupSpecs"][0]["maxReplicas"],
    )
    assert cluster_spec_hash(patched) == cluster_spec_hash(running)
    sets = [a for k, v in helm_sets.items() for a in ("--set", f"{k}={v}")]
    upgraded = one(render_with("-f", str(HELM_VALUES / "app-prod.yaml"), *sets), "RayService")
    assert cluster_spec_hash(upgraded["spec"]["rayClusterConfig"]) == cluster_spec_hash(running)  # no effect
    new_image = one(
        render_with("-f", str(HELM_VALUES / "app-prod.yaml"), "--set", "image.tag=0.2.0"), "RayService"
    )["spec"]["rayClusterConfig"]
    assert cluster_spec_hash(new_image) != cluster_spec_hash(running)  # this one is an upgrade


OUTSIDE_CLIENT = Peer(ip="203.0.113.7")
LOAD_BALANCER = [
    "--set",
    "loadBalancer.enabled=true",
    "--set",
    "loadBalancer.loadBalancerSourceRanges[0]=203.0.113.0/24",
    "--set",
    "loadBalancer.annotations.lb\\.example/internal=true",
]


def test_rayservice_load_balancer_is_kuberays_serve_service_on_the_serving_cluster_only():
    """The LoadBalancer is RayService spec.serveService, from which KubeRay builds <name>-serve-svc with a
    selector on one RayCluster: during a NewCluster upgrade it never spans both clusters' pods."""
    docs = render_with(*LOAD_BALANCER)
    assert not [s for s in by_kind(docs, "Service") if s["spec"].get("type") == "LoadBalancer"]
    service = one(docs, "RayService")
    assert rayservice_errors(service) == []
    old, new = f"{RELEASE}-aaaaa", f"{RELEASE}-bbbbb"
    lb = serve_service(service, cluster_name=old)
    assert lb["metadata"]["name"] == f"{RELEASE}-serve-svc"
    assert lb["spec"]["type"] == "LoadBalancer"
    assert lb["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert lb["metadata"]["annotations"] == {"lb.example/internal": "true"}
    assert lb["spec"]["ports"] == [{"name": "serve", "port": 80, "targetPort": "serve", "protocol": "TCP"}]
    labels, ports, _ = ray_pod(docs, "cpu-workers")
    serving = {**labels, "ray.io/serve": "true"}
    selector = {"matchLabels": lb["spec"]["selector"]}
    assert netpol_selects(selector, {**serving, "ray.io/cluster": old})
    assert not netpol_selects(selector, {**serving, "ray.io/cluster": new})
    assert ports["serve"] == 8000  # targetPort "serve" resolves to the Serve proxy


@pytest.mark.parametrize("mode", ["rayservice", "deployment"])
def test_load_balancer_traffic_passes_the_network_policies(mode):
    docs = render_with("--set", f"mode={mode}", *LOAD_BALANCER)
    if mode == "rayservice":
        labels, ports, _ = ray_pod(docs, "cpu-workers")
    else:
        template = one(docs, "Deployment")["spec"]["template"]
        labels = template["metadata"]["labels"]
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        [lb] = [s for s in by_kind(docs, "Service") if s["spec"].get("type") == "LoadBalancer"]
        assert netpol_selects({"matchLabels": lb["spec"]["selector"]}, labels)
    policies = by_kind(docs, "NetworkPolicy")
    assert admits(policies, labels, ports, "serve", OUTSIDE_CLIENT)
    assert not admits(policies, labels, ports, "metrics", OUTSIDE_CLIENT)
    without = by_kind(render_with("--set", f"mode={mode}"), "NetworkPolicy")
    assert not admits(without, labels, ports, "serve", OUTSIDE_CLIENT)  # default deny without a LoadBalancer


@pytest.mark.parametrize("case", [c for c in CASES if c != "dev" and not c.startswith("dev-")])  # dev: none
def test_network_policies_default_deny_and_allow_only_what_is_needed(case):
    docs = render(case)
    policies = by_kind(docs, "NetworkPolicy")
    deny = [p for p in policies if p["metadata"]["name"].endswith("default-deny")]
    assert len(deny) == 1 and "ingress" not in deny[0]["spec"] and "egress" not in deny[0]["spec"]
    assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    allowed_ports = {
        p["port"]
        for pol in policies
        for rule in pol["spec"].get("ingress", [])
        for p in rule.get("ports", [])
    }
    assert {"serve", "metrics"} <= allowed_ports
    egress_ports = {
        p["port"] for pol in policies for rule in pol["spec"].get("egress", []) for p in rule.get("ports", [])
    }
    assert 53 in egress_ports
    if by_kind(docs, "RayService"):
        assert "dashboard" in allowed_ports  # the operator's PUT of serveConfigV2
        internal = next(p for p in policies if p["metadata"]["name"].endswith("ray-internal"))
        assert internal["spec"]["ingress"][0]["from"][0]["podSelector"]
        autoscaling = one(docs, "RayService")["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"]
        # Only the autoscaler talks to the API server.
        assert (6443 in egress_ports) is autoscaling


@pytest.mark.parametrize("case", CASES)
def test_standard_labels_names_and_no_hard_coded_namespace(case):
    for doc in render(case):
        meta = doc["metadata"]
        assert len(meta["name"]) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"])
        assert "namespace" not in meta, f"{doc['kind']}/{meta['name']} hard-codes a namespace"
        labels = meta["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/component",
            "app.kubernetes.io/part-of",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, f"{doc['kind']}/{meta['name']} lacks {key}"


@pytest.mark.parametrize("case", CASES)
def test_settings_carry_the_serve_process_env_of_serve_env(case):
    """serve.env (Ray Serve process settings used by `make run` and the tests' clusters) reaches every
    app container through the settings ConfigMap."""
    wanted = dict(
        line.split("=", 1)
        for line in (REPO / "serve.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert wanted
    docs = render(case)
    [settings] = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-settings")]
    assert wanted.items() <= settings["data"].items()
    for _, spec in (s for d in docs for s in pod_specs(d)):
        for container in spec["containers"]:
            assert {"configMapRef": {"name": settings["metadata"]["name"]}} in container["envFrom"]


def test_image_defaults_to_the_chart_app_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = one(render("deployment"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"localhost/ray-serve-image-classifier:{chart['appVersion']}"
    # Fully qualified (a registry host before the first slash), so no runtime resolves it against docker.io.
    assert "." in container["image"].split("/")[0] or container["image"].startswith("localhost/")
    digest = one(render("deployment-all-on"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert digest["image"] == "localhost/ray-serve-image-classifier@sha256:" + "ab" * 32


def test_deployment_mode_runs_the_charts_serve_config_with_the_overrides():
    """deploymentOverrides reach mode deployment too: the pods `serve run` the chart's ConfigMap (the
    document a RayService gets as serveConfigV2), and a change to it rolls the pods."""
    override = (
        "serveConfig.deploymentOverrides[0].name=ImageClassifier",
        "serveConfig.deploymentOverrides[0].set.user_config.max_batch_size=8",
    )
    docs = render_with(*CASES["deployment"], *(a for o in override for a in ("--set", o)))
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    [volume] = [v for v in pod["volumes"] if v["name"] == "serve-config"]
    [config_map] = [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"]
    ]
    assert env["SERVE_CONFIG_FILE"] == f"{mounts['serve-config']}/serve_config.yaml"
    served = yaml.safe_load(config_map["data"]["serve_config.yaml"])
    [model] = [d for d in served["applications"][0]["deployments"] if d["name"] == "ImageClassifier"]
    assert model["user_config"]["max_batch_size"] == 8
    plain = one(render("deployment"), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
        != plain["checksum/settings"]
    )
