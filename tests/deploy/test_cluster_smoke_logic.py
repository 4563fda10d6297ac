"""The cluster smoke test's own logic, checked here where no cluster runs: the rendered-vs-live
comparison, and that it finds the Service the chart's HTTPRoute/Ingress send traffic to (real helm)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from harness.charts import by_kind, helm_path, is_subset, serve_service_name

REPO = Path(__file__).resolve().parents[2]


def render(*sets: str) -> list[dict]:
    args = [
        helm_path(),
        "template",
        "ray-serve-image-classifier",
        str(REPO / "kuberay" / "chart"),
        "-n",
        "ns",
    ]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_is_subset_ignores_server_defaults_but_not_differences():
    rendered = {"ports": [{"name": "serve", "port": 8000, "targetPort": "serve"}]}
    live = {
        "ports": [{"name": "serve", "port": 8000, "targetPort": "serve", "protocol": "TCP"}],
        "clusterIP": "10.0.0.1",
    }
    assert is_subset(rendered, live) == []
    assert is_subset({"minReplicas": 3}, {"minReplicas": 2}) == [".minReplicas: 2 != 3"]
    assert is_subset({"ports": [{"port": 8000}]}, {"ports": []})
    assert is_subset({"cpu": "500m"}, {"cpu": "500m", "memory": "1Gi"}) == []


@pytest.mark.parametrize("mode", ["rayservice", "deployment"])
def test_serve_service_is_the_one_routes_point_to(mode):
    docs = render(f"mode={mode}", "httpRoute.enabled=true", "ingress.enabled=true")
    name = serve_service_name(docs, mode)
    [route] = by_kind(docs, "HTTPRoute")
    assert {ref["name"] for rule in route["spec"]["rules"] for ref in rule["backendRefs"]} == {name}
    [ingress] = by_kind(docs, "Ingress")
    backends = {
        p["backend"]["service"]["name"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]
    }
    assert backends == {name}
    if mode == "rayservice":
        assert name == f"{by_kind(docs, 'RayService')[0]['metadata']['name']}-serve-svc"
