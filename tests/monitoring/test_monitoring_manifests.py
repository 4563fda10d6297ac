"""Monitoring manifests: PodMonitors and the PrometheusRule validate against the real CRD schemas,
`kubectl kustomize monitoring/` builds with the dashboards as labelled ConfigMaps, the dashboards are
structurally sound and up to date with their generators, and the Alertmanager example passes amtool."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from harness.promstack import DASHBOARDS, MONITORING, REPO, panels, tool
from harness.tools import CRDS_DIR

CRD_FILES = {
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}
MANIFESTS = sorted(
    p
    for p in MONITORING.glob("*.yaml")
    if yaml.safe_load(p.read_text()).get("apiVersion", "").startswith("monitoring.coreos.com")
)


def _strict(schema: dict) -> dict:
    """The API server prunes/rejects unknown fields: forbid them unless the schema preserves them."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if isinstance(schema.get("pattern"), str) and "(?i)" in schema["pattern"][1:]:
            # Go's RE2 allows inline flags anywhere (e.g. "^(?i)..."); Python only at the start.
            schema["pattern"] = "(?i)" + schema["pattern"].replace("(?i)", "")
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in schema
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def _schema(kind: str) -> dict:
    if not CRDS_DIR.is_dir():
        pytest.skip(f"CRDs not found at {CRDS_DIR}; set SHARED_CRDS_DIR")
    crd = yaml.safe_load((CRDS_DIR / CRD_FILES[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(version["schema"]["openAPIV3Schema"])


def test_there_are_monitors_and_rules():
    kinds = sorted(yaml.safe_load(p.read_text())["kind"] for p in MANIFESTS)
    assert kinds == ["PodMonitor", "PodMonitor", "PodMonitor", "PrometheusRule"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_crd(path):
    doc = yaml.safe_load(path.read_text())
    jsonschema.validate(doc, _schema(doc["kind"]))
    assert "namespace" not in doc["metadata"], "no hard-coded namespace: apply with -n"
    assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_schema_check_rejects_unknown_fields():
    doc = yaml.safe_load((MONITORING / "podmonitor-ray-head.yaml").read_text())
    doc["spec"]["podMetricsEndpoints"][0]["prot"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema("PodMonitor"))


def test_ray_pod_monitors_keep_the_cluster_label():
    head = yaml.safe_load((MONITORING / "podmonitor-ray-head.yaml").read_text())
    workers = yaml.safe_load((MONITORING / "podmonitor-ray-workers.yaml").read_text())
    assert head["spec"]["selector"]["matchLabels"]["ray.io/node-type"] == "head"
    assert workers["spec"]["selector"]["matchLabels"]["ray.io/node-type"] == "worker"
    assert [e["port"] for e in head["spec"]["podMetricsEndpoints"]] == [
        "metrics",
        "as-metrics",
        "dash-metrics",
    ]
    for endpoint in head["spec"]["podMetricsEndpoints"] + workers["spec"]["podMetricsEndpoints"]:
        assert {
            "action": "replace",
            "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
            "targetLabel": "ray_io_cluster",
        } in endpoint["relabelings"]


def test_kustomize_builds_monitors_rules_and_dashboard_configmaps():
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(MONITORING)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("PodMonitor") == 3 and kinds.count("PrometheusRule") == 1
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert {k for cm in configmaps for k in cm["data"]} == {p.name for p in DASHBOARDS.glob("*.json")}
    values = yaml.safe_load((MONITORING / "kube-prometheus-stack-values.yaml").read_text())
    sidecar = values["grafana"]["sidecar"]["dashboards"]
    for cm in configmaps:
        assert cm["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]
        assert cm["metadata"]["annotations"][sidecar["folderAnnotation"]]
        json.loads(next(iter(cm["data"].values())))
        # kubectl apply (client side) stores the object in a 256 KiB annotation.
        assert len(json.dumps(cm)) < 250_000, cm["metadata"]["name"]


def test_kube_prometheus_stack_values_select_monitors_from_any_namespace():
    spec = yaml.safe_load((MONITORING / "kube-prometheus-stack-values.yaml").read_text())["prometheus"][
        "prometheusSpec"
    ]
    for kind in ("podMonitor", "serviceMonitor", "rule"):
        assert spec[f"{kind}SelectorNilUsesHelmValues"] is False
        assert spec[f"{kind}Selector"] == {} and spec[f"{kind}NamespaceSelector"] == {}


def _generator_check(script: str) -> subprocess.CompletedProcess:
    """The generator's own --check, run the way its docstring says (the chart's generators likewise)."""
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "monitoring" / script), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_overview_dashboard_is_generated_and_current():
    result = _generator_check("overview_dashboard.py")
    assert result.returncode == 0, result.stderr + "run scripts/monitoring/overview_dashboard.py"


def test_ray_dashboards_are_exported_from_the_installed_ray():
    result = _generator_check("export_ray_dashboards.py")
    assert result.returncode == 0, result.stderr + "run scripts/monitoring/export_ray_dashboards.py"
    import ray

    exported = sorted(DASHBOARDS.glob("ray-*.json"))
    assert len(exported) == 3, exported
    for path in exported:
        assert f"rayVersion:{ray.__version__}" in json.loads(path.read_text())["tags"], path.name


def test_overview_dashboard_structure():
    dash = json.loads((DASHBOARDS / "classifier-overview.json").read_text())
    assert dash["uid"] == "ray-serve-image-classifier" and dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert {"namespace", "cluster", "application"} <= set(variables)
    ids, titles = set(), []
    for p in panels(dash):
        assert p["id"] not in ids
        ids.add(p["id"])
        titles.append(p["title"])
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert "$namespace" in t["expr"], (p["title"], t["expr"])
            assert "$cluster" in t["expr"] or "classifier:" in t["expr"], (p["title"], t["expr"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
    for wanted in (
        "Request rate by route and status",
        "Error ratio",
        "HTTP latency",
        "Model latency per batch",
        "Batch size",
        "Batch wait time",
        "Queue length",
        "Target vs running replicas",
        "Replica health",
        "Pods per Ray group",
        "CPU per pod",
        "Memory per pod",
        "Images per second per model replica",
    ):
        assert wanted in titles
    assert any("budget left" in t for t in titles)


@pytest.mark.parametrize("name", ["ray-default.json", "ray-serve.json", "ray-serve-deployment.json"])
def test_ray_dashboards_use_a_templated_datasource(name):
    dash = json.loads((DASHBOARDS / name).read_text())
    assert dash["uid"] and dash["schemaVersion"]
    assert any(v["type"] == "datasource" for v in dash["templating"]["list"])
    for p in panels(dash):
        ds = p.get("datasource")
        assert ds in (None, "${datasource}") or (isinstance(ds, dict) and ds.get("uid") == "${datasource}"), (
            p["title"],
            ds,
        )


def test_alertmanager_example_passes_amtool():
    result = subprocess.run(
        [tool("amtool"), "check-config", str(MONITORING / "alertmanager-config.example.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_routes_critical_alerts_to_the_pager():
    config = str(MONITORING / "alertmanager-config.example.yaml")
    for labels, receiver in (
        ("alertname=ClassifierRayHeadDown severity=critical", "classifier-pager"),
        ("alertname=ClassifierReplicaUnhealthy severity=warning", "classifier-tickets"),
        ("alertname=SomethingElse severity=critical", "default"),
    ):
        out = subprocess.run(
            [tool("amtool"), "config", "routes", "test", f"--config.file={config}", *labels.split()],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.stdout.strip() == receiver, (labels, out.stdout, out.stderr)
