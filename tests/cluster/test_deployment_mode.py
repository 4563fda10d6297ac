"""Mode `deployment` on the real cluster (no KubeRay involved): the chart's Deployment of single-node
Ray Serve pods with helm-values/app-deployment-local.yaml (sized for this one 2-CPU node), its Service,
HPA and PodDisruptionBudget. Load from 127.0.0.1 goes through a gateway in front of the Service, the
way an ingress controller sends it, and is counted per pod from each pod's own metrics.
"""

from __future__ import annotations

import base64
import threading
import time
from itertools import pairwise

import pytest
import requests
import yaml

from harness.cluster_prometheus import ClusterPrometheus
from harness.images import CAT_LABELS
from harness.kubetest import (
    CHART,
    REPO,
    Load,
    chart_default_image,
    check_cluster_prometheus,
    cluster,  # noqa: F401 - fixture
    condition,
    create_namespace,
    delete_namespace,
    gateway,
    get,
    helm,
    helm_install,
    is_ready,
    kubectl,
    live_pods,
    pod_metric,
    port_forward,
    ready_endpoints,
    tag_image,
    wait_for,
    wait_http_ok,
)

pytestmark = pytest.mark.cluster

RELEASE = "classifier"
NAME = "classifier-ray-serve-image-classifier"
VALUES = ("helm-values/app-deployment-local.yaml",)
METRICS_PORT = 8080
IMAGES_OK = "ray_classifier_images_total"


@pytest.fixture(scope="module")
def app(cluster):  # noqa: F811
    ns = create_namespace("deploy")
    try:
        start = time.monotonic()
        helm_install(RELEASE, ns, *VALUES)
        kubectl("rollout", "status", "-n", ns, f"deployment/{NAME}", "--timeout=600s", timeout=620)
        print(f"\nhelm install -> Deployment Available: {time.monotonic() - start:.0f} s")
        yield ns
    finally:
        delete_namespace(ns)


def ready_pods(ns: str) -> list[str]:
    return sorted(
        name for name, p in live_pods(ns, "app.kubernetes.io/component=serve").items() if is_ready(p)
    )


def images_served(ns: str, pod: str) -> float:
    return pod_metric(ns, pod, METRICS_PORT, IMAGES_OK, outcome="ok")


def settled_counts(ns: str, pods: list[str], quiet_s: float = 12, timeout_s: float = 60) -> dict[str, float]:
    """Per-pod counts once Ray's periodic export has caught up (unchanged for ``quiet_s``)."""
    counts, since, deadline = (
        {p: images_served(ns, p) for p in pods},
        time.monotonic(),
        time.monotonic() + timeout_s,
    )
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(2)
        now = {p: images_served(ns, p) for p in pods}
        if now != counts:
            counts, since = now, time.monotonic()
    return counts


def test_three_replicas_available_behind_three_endpoints(app):
    deployment = get("deployment", NAME, app)
    assert condition(deployment, "Available").get("status") == "True"
    assert deployment["status"]["availableReplicas"] >= 3, deployment["status"]
    pods = ready_pods(app)
    assert len(pods) >= 3, pods
    assert ready_endpoints(app, NAME) == pods


def test_hpa_reads_cpu_from_metrics_server(app):
    def cpu_metric():
        hpa = get("hpa", NAME, app)
        for metric in (hpa.get("status") or {}).get("currentMetrics") or []:
            current = (metric.get("resource") or {}).get("current") or {}
            if (
                metric.get("type") == "Resource"
                and metric["resource"]["name"] == "cpu"
                and current.get("averageUtilization") is not None
            ):
                return hpa
        return None

    hpa = wait_for(cpu_metric, 180, f"HPA {NAME} to report CPU utilisation", poll_s=5)
    able = condition(hpa, "ScalingActive")
    assert able.get("status") == "True", able
    print(f"\nHPA: {hpa['status']['currentMetrics']} -> {hpa['status']['desiredReplicas']} replicas")
    top = kubectl("top", "pods", "-n", app).stdout
    assert all(pod in top for pod in ready_pods(app)), top


def test_load_from_loopback_reaches_every_pod(app, cat_png):
    with gateway(f"{NAME}.{app}.svc.cluster.local:8000", chart_default_image()) as port:
        wait_http_ok(f"http://127.0.0.1:{port}/ready")
        pods = ready_pods(app)
        before = settled_counts(app, pods)
        with Load(
            f"http://127.0.0.1:{port}/predict", cat_png, clients=3, max_requests=240, max_seconds=300
        ) as load:
            wait_for(lambda: load.total >= 240, 320, "240 requests", poll_s=1)
        stayed = [p for p in pods if p in ready_pods(app)]
        after = settled_counts(app, stayed)
    served = {p: after[p] - before[p] for p in stayed}
    print(f"\nper pod: {served}; {load.summary()}")
    assert load.failed == 0, load.summary()
    assert all(n > 0 for n in served.values()), served
    # Pods the HPA added during the load may have taken some too; the pods of the start took most.
    assert sum(served.values()) <= load.ok


def test_a_pod_that_is_not_ready_gets_no_traffic(app, cat_png):
    """A pod is taken out of readiness by stopping its model replicas (its /ready probe times out,
    /health still answers): it leaves the Service's endpoints and its count stops while load goes on."""
    with gateway(f"{NAME}.{app}.svc.cluster.local:8000", chart_default_image()) as port:
        wait_http_ok(f"http://127.0.0.1:{port}/ready")
        victim = ready_pods(app)[0]
        stop = (
            'for d in /proc/[0-9]*; do [ "${{d#/proc/}}" = $$ ] && continue; '
            "case \"$(tr '\\0' ' ' < $d/cmdline 2>/dev/null)\" in "
            "*ServeReplica:classifier:ImageClassifier*) kill -s {sig} ${{d#/proc/}};; esac; done"
        )
        with Load(
            f"http://127.0.0.1:{port}/predict", cat_png, clients=2, max_seconds=240, timeout_s=60
        ) as load:
            time.sleep(5)
            kubectl("exec", "-n", app, victim, "--", "/bin/sh", "-c", stop.format(sig="STOP"))
            try:
                wait_for(
                    lambda: victim not in ready_endpoints(app, NAME), 90, f"{victim} out of the endpoints"
                )
                pod = get("pod", victim, app)
                assert condition(pod, "Ready").get("status") == "False", pod["status"]
                out_at = images_served(app, victim)
                others_at = {p: images_served(app, p) for p in ready_pods(app)}
                time.sleep(30)
                out_later = images_served(app, victim)
                others_later = {p: images_served(app, p) for p in ready_pods(app) if p in others_at}
            finally:
                kubectl("exec", "-n", app, victim, "--", "/bin/sh", "-c", stop.format(sig="CONT"))
            wait_for(lambda: victim in ready_endpoints(app, NAME), 120, f"{victim} back in the endpoints")
    print(
        f"\n{victim} while not ready: {out_at} -> {out_later}; others {others_at} -> {others_later}; "
        f"{load.summary()}"
    )
    assert out_later == out_at, "a pod out of readiness still received requests"
    assert sum(others_later.values()) > sum(others_at.values()), "the load stopped altogether"


def model_user_config(ns: str) -> dict:
    """The model's user_config as a pod's own Serve reports it (its dashboard listens on the pod's
    loopback, which a port-forward reaches; the token is the chart's Secret)."""
    pod = ready_pods(ns)[0]
    [secret] = [s for s in get("secrets", namespace=ns) if "auth_token" in s.get("data", {})]
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    with port_forward(ns, f"pod/{pod}", 8265) as port:
        r = requests.get(
            f"http://127.0.0.1:{port}/api/serve/applications/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    assert r.status_code == 200, r.text
    deployments = r.json()["applications"]["classifier"]["deployments"]
    return deployments["ImageClassifier"]["deployment_config"]["user_config"]


def test_upgrade_and_rollback_under_load_fail_no_request(app, cat_png, tmp_path):
    """A new image tag and a changed user_config roll the Deployment (maxSurge 1, maxUnavailable 0);
    `helm rollback` rolls it back. Pods that are not ready yet take no traffic meanwhile."""
    image = chart_default_image()
    repo, old_tag = image.rsplit(":", 1)
    new_tag = "0.1.1"
    tag_image(image, f"{repo}:{new_tag}")
    v11 = tmp_path / "v1.1.yaml"
    v11.write_text(
        yaml.safe_dump(
            {
                "image": {"tag": new_tag},
                "serveConfig": {
                    "deploymentOverrides": [
                        {"name": "ImageClassifier", "set": {"user_config": {"max_batch_size": 8}}}
                    ]
                },
            }
        )
    )
    assert model_user_config(app)["max_batch_size"] == 4
    steps = [
        (
            "upgrade 1.0 -> 1.1",
            ("upgrade", RELEASE, str(CHART), "-n", app, "-f", str(REPO / VALUES[0]), "-f", str(v11)),
            new_tag,
            8,
        ),
        ("rollback 1.1 -> 1.0", ("rollback", RELEASE, "1", "-n", app), old_tag, 4),
    ]
    with gateway(f"{NAME}.{app}.svc.cluster.local:8000", image) as port:
        wait_http_ok(f"http://127.0.0.1:{port}/ready")
        for step, helm_args, want_tag, want_batch in steps:
            start = time.monotonic()
            unready_traffic: dict[str, float] = {}
            watching = threading.Event()

            def watch(
                watching=watching, unready_traffic=unready_traffic
            ):  # an unready new pod serves nothing
                while not watching.is_set():
                    for name, p in live_pods(app, "app.kubernetes.io/component=serve").items():
                        if not is_ready(p) and p["status"].get("phase") == "Running":
                            unready_traffic[name] = max(
                                unready_traffic.get(name, 0.0), images_served(app, name)
                            )
                    time.sleep(2)

            watcher = threading.Thread(target=watch, daemon=True)
            with Load(f"http://127.0.0.1:{port}/predict", cat_png, clients=2, max_seconds=1800) as load:
                watcher.start()
                time.sleep(10)
                helm(*helm_args)
                kubectl("rollout", "status", "-n", app, f"deployment/{NAME}", "--timeout=900s", timeout=920)
                time.sleep(15)
            watching.set()
            watcher.join(30)
            pods = live_pods(app, "app.kubernetes.io/component=serve").values()
            images = {c["image"] for p in pods for c in p["spec"]["containers"]}
            print(
                f"\n{step}: {time.monotonic() - start:.0f} s; {load.summary()}; "
                f"new pods before ready: {unready_traffic}"
            )
            assert load.failed == 0, load.summary()
            assert load.ok > 50, load.summary()
            assert images == {f"{repo}:{want_tag}"}, images
            assert unready_traffic and not any(unready_traffic.values()), unready_traffic
            assert model_user_config(app)["max_batch_size"] == want_batch


def test_a_cat_photo_classifies_through_the_service(app, cat_png):
    with port_forward(app, f"svc/{NAME}", 8000) as port:
        wait_http_ok(f"http://127.0.0.1:{port}/ready")
        r = requests.post(
            f"http://127.0.0.1:{port}/predict", files={"file": ("cat.png", cat_png)}, timeout=60
        )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] in CAT_LABELS, r.json()


def test_a_spike_makes_the_hpa_add_a_pod_that_serves_and_it_is_removed_after_the_load(app, cat_png):
    """10x the clients: metrics-server's CPU makes the HPA raise the Deployment above its minimum, the
    new pod becomes Ready, joins the Service and serves. With the load gone the HPA scales back to the
    minimum (its scale-down window shortened then from the chart's 300 s, so the test stays short: with
    the short window during the load, the HPA removed the new pod before it was Ready, because on two
    cores a fourth pod adds no CPU and the average falls below the target while it starts)."""
    minimum = get("hpa", NAME, app)["spec"]["minReplicas"]
    # Earlier load may have scaled it up: start from the minimum, as if no test ran before.
    wait_for(
        lambda: len(ready_pods(app)) == minimum and len(all_serve_pods(app)) == minimum,
        420,
        f"{minimum} pods",
        poll_s=3,
    )
    before = set(ready_pods(app))
    try:
        with gateway(f"{NAME}.{app}.svc.cluster.local:8000", chart_default_image()) as port:
            wait_http_ok(f"http://127.0.0.1:{port}/ready")
            with Load(
                f"http://127.0.0.1:{port}/predict", cat_png, clients=20, max_seconds=900, timeout_s=60
            ) as load:
                scaled = wait_for(
                    lambda: get("deployment", NAME, app)["spec"]["replicas"] > minimum,
                    300,
                    "the HPA to raise the Deployment's replicas",
                    poll_s=2,
                )
                new = wait_for(
                    lambda: [p for p in ready_pods(app) if p not in before],
                    600,
                    "the new pod Ready",
                    poll_s=2,
                )[0]
                wait_for(lambda: new in ready_endpoints(app, NAME), 60, f"{new} in the Service's endpoints")
                wait_for(lambda: images_served(app, new) > 0, 120, f"{new} serving", poll_s=2)
            hpa = get("hpa", NAME, app)
            print(
                f"\nspike: {load.summary()}; HPA {hpa['status'].get('currentMetrics')} -> "
                f"{hpa['status']['desiredReplicas']}; {new} served {images_served(app, new):.0f}"
            )
            assert scaled and load.failed == 0, load.summary()
        helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "-n",
            app,
            "-f",
            str(REPO / VALUES[0]),
            "--set-json",
            'autoscaling.behavior.scaleDown={"stabilizationWindowSeconds": 20, "selectPolicy": "Min",'
            ' "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]}',
        )
        wait_for(
            lambda: (
                get("deployment", NAME, app)["spec"]["replicas"] == minimum
                and len(all_serve_pods(app)) == minimum
            ),
            420,
            f"the HPA back to {minimum} pods",
            poll_s=5,
        )
        rescales = [
            e["message"]
            for e in get("events", namespace=app)
            if e["involvedObject"].get("kind") == "HorizontalPodAutoscaler"
            and e["reason"] == "SuccessfulRescale"
        ]
        assert any("above target" in m for m in rescales) and any("below target" in m for m in rescales), (
            rescales
        )
    finally:
        helm("upgrade", RELEASE, str(CHART), "-n", app, "-f", str(REPO / VALUES[0]))


def all_serve_pods(ns: str) -> list[str]:
    return [
        p["metadata"]["name"] for p in get("pods", namespace=ns, selector="app.kubernetes.io/component=serve")
    ]


def test_a_deleted_serving_pod_is_replaced_and_no_request_fails(app, cat_png):
    """`kubectl delete pod` under load: the pod leaves the endpoints before it stops, the others answer
    meanwhile, and the Deployment's replacement becomes Ready and takes traffic."""
    with gateway(f"{NAME}.{app}.svc.cluster.local:8000", chart_default_image()) as port:
        wait_http_ok(f"http://127.0.0.1:{port}/ready")
        pods = ready_pods(app)
        victim = pods[0]
        with Load(
            f"http://127.0.0.1:{port}/predict", cat_png, clients=2, max_seconds=400, timeout_s=60, record=True
        ) as load:
            time.sleep(5)
            deleted = time.monotonic()
            kubectl("delete", "pod", victim, "-n", app, "--wait=false")
            replacement = wait_for(
                lambda: [p for p in ready_pods(app) if p not in pods],
                300,
                "the replacement pod Ready",
                poll_s=1,
            )[0]
            back = time.monotonic() - deleted
            wait_for(lambda: images_served(app, replacement) > 0, 120, f"{replacement} serving", poll_s=2)
        answered = sorted(t for t, _, ok in load.requests_log if ok and t > deleted)
        gap = max(b - a for a, b in pairwise([deleted, *answered]))
    print(
        f"\npod loss: {load.summary()}; replacement Ready after {back:.0f} s; longest wait between answers "
        f"{gap:.1f} s"
    )
    assert load.failed == 0, load.summary()
    assert victim not in all_serve_pods(app)
    assert len(ready_pods(app)) >= len(pods)


def test_prometheus_scrapes_what_the_podmonitor_selects_and_the_dashboard_and_rules_work(app, cat_png):
    """Debian's Prometheus in the node's network namespace with the scrape config generated from
    monitoring/podmonitor-*.yaml: its targets are exactly the pods and ports the API server selects
    with the PodMonitors' selectors, all up; under load the overview's queries return this
    namespace's data and every recording and alerting rule evaluates."""
    rejected = []

    def load():
        with gateway(f"{NAME}.{app}.svc.cluster.local:8000", chart_default_image()) as port:
            wait_http_ok(f"http://127.0.0.1:{port}/ready")
            with Load(f"http://127.0.0.1:{port}/predict", cat_png, clients=2, max_seconds=60) as running:
                # A few undecodable uploads beside the load, so the rejection panel has data to show.
                for _ in range(12):
                    r = requests.post(
                        f"http://127.0.0.1:{port}/predict",
                        files={"file": ("x.jpg", b"not an image")},
                        timeout=30,
                    )
                    rejected.append((r.status_code, r.json().get("error", {}).get("code")))
                    time.sleep(5)
            assert running.failed == 0 and running.ok > 20, running.summary()
        time.sleep(20)  # Ray exports application metrics every few seconds; two more scrapes

    with ClusterPrometheus([app]) as prom:
        result = check_cluster_prometheus(app, prom, load)
    # check_cluster_prometheus asserted targets == the selection at one moment; the pods may change
    # afterwards (an HPA scale-down of an earlier test's load), so no second snapshot is compared here.
    assert result["targets"], result
    assert rejected and set(rejected) == {(400, "invalid_image")}, rejected
    served = [
        title for title in result["empty_panels"] if "request" in title.lower() or "latency" in title.lower()
    ]
    assert not served, f"panels without data under load (with rejections sent): {result['empty_panels']}"
