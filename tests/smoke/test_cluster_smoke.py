"""Smoke test of an installed release on your own Kubernetes cluster (pytest -m smoke).

Skipped, with the reason, when no kubeconfig answers. Otherwise, with the official `kubernetes` client:
the RayService is Ready (or, in deployment mode, the Deployment is Available); the objects that
`helm template` renders for the same release, namespace and values exist in the cluster with the
rendered spec (Services, HPA, PDB, NetworkPolicies, ...); the serving pods are Running and Ready; and
a port-forward to a pod behind the serve Service classifies the cat photo.

Settings (the same variables as scripts/k8s/*.sh): APP_NAMESPACE (default image-classifier), RELEASE
(default ray-serve-image-classifier), VALUES (values files, comma-separated; default
helm-values/app-dev.yaml), READY_TIMEOUT_S (default 900), KUBECONFIG / KUBE_CONTEXT.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from harness.charts import by_kind, is_subset, serve_service_name
from harness.images import CAT_LABELS

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".tools" / "bin" / "helm"
NAMESPACE = os.environ.get("APP_NAMESPACE", "image-classifier")
RELEASE = os.environ.get("RELEASE", "ray-serve-image-classifier")
VALUES = [v for v in os.environ.get("VALUES", "helm-values/app-dev.yaml").split(",") if v]
READY_TIMEOUT_S = float(os.environ.get("READY_TIMEOUT_S", "900"))

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def api_client():
    """An API client for the current kubeconfig, or a skip saying why there is none."""
    try:
        from kubernetes import client, config
    except ImportError:  # a dependency of the test suite: missing is a failure, not a skip
        pytest.fail("the kubernetes client is not installed (pip install kubernetes==37.0.2)")
    try:
        config.load_kube_config(context=os.environ.get("KUBE_CONTEXT"))
    except Exception as kube_exc:  # noqa: BLE001 - any reason means "no kubeconfig"
        try:
            config.load_incluster_config()
        except Exception:  # noqa: BLE001
            pytest.skip(
                f"cluster smoke test skipped: no kubeconfig ({kube_exc}); set KUBECONFIG "
                "to a cluster with the release installed (docs/SETUP.md)"
            )
    api = client.ApiClient()
    try:
        version = client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cluster smoke test skipped: the kubeconfig's API server does not answer ({exc})")
    print(f"\ncluster: Kubernetes {version.git_version}; release {RELEASE} in namespace {NAMESPACE}")
    return api


@pytest.fixture(scope="module")
def rendered(api_client) -> list[dict]:
    assert HELM.exists(), "helm missing: run scripts/tools/helm.sh"
    args = [str(HELM), "template", RELEASE, str(REPO / "kuberay" / "chart"), "-n", NAMESPACE]
    for values in VALUES:
        args += ["-f", str(REPO / values)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 5):
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        ok, last = predicate()
        if ok:
            return last
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last}")


@pytest.fixture(scope="module")
def workload_ready(api_client, rendered) -> dict:
    """Wait until the release serves: RayService condition Ready, or Deployment Available."""
    from kubernetes import client

    if services := by_kind(rendered, "RayService"):
        name = services[0]["metadata"]["name"]
        custom = client.CustomObjectsApi(api_client)

        def ready():
            obj = custom.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayservices", name)
            conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
            return conditions.get("Ready", {}).get("status") == "True", obj.get("status")

        status = wait_for(ready, READY_TIMEOUT_S, f"RayService {name} Ready")
        return {"mode": "rayservice", "name": name, "status": status}
    [deployment] = by_kind(rendered, "Deployment")
    name = deployment["metadata"]["name"]
    apps = client.AppsV1Api(api_client)

    def available():
        status = apps.read_namespaced_deployment_status(name, NAMESPACE).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return conditions.get("Available") == "True" and (
            status.available_replicas or 0
        ) > 0, status.to_dict()

    status = wait_for(available, READY_TIMEOUT_S, f"Deployment {name} Available")
    return {"mode": "deployment", "name": name, "status": status}


CHECKED_SPECS = {
    "Service": "spec.ports",
    "HorizontalPodAutoscaler": "spec",
    "PodDisruptionBudget": "spec",
    "NetworkPolicy": "spec",
}


def test_workload_is_ready(workload_ready):
    print(f"\n{workload_ready['mode']} {workload_ready['name']} ready")


def test_rendered_objects_exist_as_rendered(api_client, rendered, workload_ready):
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import NotFoundError

    dynamic = DynamicClient(api_client)
    kinds = {d["kind"] for d in rendered}
    if workload_ready["mode"] == "deployment":
        assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds, kinds
    problems = []
    for doc in rendered:
        kind, name = doc["kind"], doc["metadata"]["name"]
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=kind)
        try:
            live = resource.get(name=name, namespace=NAMESPACE if resource.namespaced else None).to_dict()
        except NotFoundError:
            problems.append(f"{kind}/{name} missing")
            continue
        if field := CHECKED_SPECS.get(kind):
            want, got = doc, live
            for key in field.split("."):
                want, got = want.get(key), (got or {}).get(key)
            problems += [f"{kind}/{name}{d}" for d in is_subset(want, got, "." + field)]
    assert not problems, "\n".join(problems)
    print(f"\n{len(rendered)} rendered objects present: {sorted(kinds)}")


def test_serving_pods_are_running_and_ready(api_client, rendered, workload_ready):
    """Every serving pod Running and Ready, within a short wait: with the head in the serve Service (the
    chart's default), KubeRay marks the RayService Ready as soon as the head's proxy answers, and a worker
    passes its own probe (KubeRay's, every 5 s) a few seconds later."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    rayservice = workload_ready["mode"] == "rayservice"
    if not rayservice:
        spec_replicas = by_kind(rendered, "Deployment")[0]["spec"].get("replicas")
        hpa = by_kind(rendered, "HorizontalPodAutoscaler")
        expected = hpa[0]["spec"]["minReplicas"] if hpa else (spec_replicas or 1)

    def pods_ready():
        pods = core.list_namespaced_pod(
            NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
        ).items
        if rayservice:
            # KubeRay labels the pods of the cluster it created for the RayService.
            pods = [
                p for p in pods if "ray.io/node-type" in (p.metadata.labels or {})
            ] or core.list_namespaced_pod(NAMESPACE, label_selector="ray.io/node-type").items
        running = [p for p in pods if p.status.phase == "Running"]
        if rayservice:
            enough = {"head", "worker"} <= {p.metadata.labels["ray.io/node-type"] for p in running}
        else:
            enough = len(running) >= expected
        ready = {p.metadata.name: all(c.ready for c in p.status.container_statuses or []) for p in running}
        state = [(p.metadata.name, p.status.phase, ready.get(p.metadata.name, False)) for p in pods]
        return enough and all(ready.values()), state

    state = wait_for(pods_ready, min(READY_TIMEOUT_S, 180), "the serving pods Running and Ready", poll_s=2)
    print(f"\nserving pods: {state}")


def test_predict_a_cat_through_a_port_forward(api_client, rendered, workload_ready, cat_png):
    from kubernetes import client
    from kubernetes.stream import portforward

    core = client.CoreV1Api(api_client)
    svc = core.read_namespaced_service(serve_service_name(rendered, workload_ready["mode"]), NAMESPACE)
    [port] = [p for p in svc.spec.ports if p.name == "serve"] or svc.spec.ports[:1]
    selector = ",".join(f"{k}={v}" for k, v in (svc.spec.selector or {}).items())
    pods = [
        p
        for p in core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
        if p.status.phase == "Running" and all(c.ready for c in p.status.container_statuses or [])
    ]
    assert pods, f"no ready pod behind Service {svc.metadata.name} ({selector})"
    target = port.target_port if isinstance(port.target_port, int) else port.port
    pod = pods[0].metadata.name
    forward = portforward(core.connect_get_namespaced_pod_portforward, pod, NAMESPACE, ports=str(target))
    try:
        sock = forward.socket(target)
        sock.setblocking(True)
        sock.settimeout(60)
        request = (
            f"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(cat_png)}\r\nConnection: close\r\n\r\n"
        ).encode() + cat_png
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    finally:
        forward.close()
    assert response.status == 200, body[:500]
    top = json.loads(body)["predictions"][0]
    print(f"\npod {pod} via Service {svc.metadata.name}: {top}")
    assert top["label"] in CAT_LABELS, top
