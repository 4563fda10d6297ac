"""The documented first install, on the real cluster with the real KubeRay operator: `helm install`
with helm-values/app-dev.yaml (mode rayservice) into a namespace that enforces Pod Security
`restricted`. The operator must accept the RayService (before the idle-timeout fix it marked it
ValidationFailed and created nothing), create the Ray cluster, have every pod admitted, deploy the
Serve app and report Ready; a cat photo and the OIP v2 tritonclient path then classify through
`<name>-serve-svc`. Then `helm upgrade` to a new image tag and a changed user_config, and `helm
rollback`, each under a steady load from 127.0.0.1 through a gateway in front of that Service:
no request may fail.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest
import yaml

from harness.charts import is_subset
from harness.kubetest import (
    CHART,
    REPO,
    Load,
    active_cluster,
    chart_default_image,
    classify_cat,
    cluster,  # noqa: F401 - fixture
    condition,
    create_namespace,
    delete_namespace,
    gateway,
    get,
    helm,
    install_until_ready,
    kuberay_events,
    port_forward,
    rayservice,
    ready_endpoints,
    render,
    run,
    serve_applications,
    tag_image,
    wait_for,
    wait_http_ok,
)

pytestmark = pytest.mark.cluster

RELEASE = "classifier"
NAME = "classifier-ray-serve-image-classifier"  # the chart's fullname for this release
VALUES = ("helm-values/app-dev.yaml",)


@pytest.fixture(scope="module")
def dev(cluster):  # noqa: F811
    ns = create_namespace("dev")
    try:
        install_until_ready(RELEASE, ns, NAME, *VALUES)
        yield ns
    finally:
        delete_namespace(ns)


def test_the_operator_accepts_the_rayservice_and_creates_the_ray_cluster(dev):
    events = kuberay_events(dev, NAME)
    reasons = {e["reason"] for e in events}
    assert "ValidationFailed" not in reasons, [
        e["message"] for e in events if e["reason"] == "ValidationFailed"
    ]
    [raycluster] = get("raycluster", namespace=dev)
    assert raycluster["metadata"]["ownerReferences"][0]["name"] == NAME
    assert raycluster["metadata"]["name"] == active_cluster(dev, NAME)
    assert condition(raycluster, "HeadPodReady").get("status") == "True", raycluster["status"]
    pods = get("pods", namespace=dev, selector=f"ray.io/cluster={raycluster['metadata']['name']}")
    types = sorted(p["metadata"]["labels"]["ray.io/node-type"] for p in pods)
    assert types == ["head", "worker"], types
    assert all(p["status"]["phase"] == "Running" for p in pods), [
        (p["metadata"]["name"], p["status"]["phase"]) for p in pods
    ]


def test_every_pod_is_admitted_under_pod_security_restricted(dev):
    labels = get("namespace", dev)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    refused = [
        e["message"]
        for e in get("events", namespace=dev)
        if e["reason"] == "FailedCreate" or "violates PodSecurity" in e.get("message", "")
    ]
    assert not refused, refused
    # What admission let through really is restricted: no pod runs as root or may escalate.
    for pod in get("pods", namespace=dev):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, pod["metadata"]["name"]
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False and sc["capabilities"]["drop"] == ["ALL"], (
                pod["metadata"]["name"],
                c["name"],
                sc,
            )


def test_the_chart_default_image_reference_is_what_runs(dev):
    images = {c["image"] for p in get("pods", namespace=dev) for c in p["spec"]["containers"]}
    assert images == {chart_default_image()}, images


def test_rendered_objects_exist_as_rendered(dev):
    problems = []
    for doc in render(RELEASE, dev, *VALUES):
        live = get(
            doc["kind"].lower(),
            doc["metadata"]["name"],
            dev if doc["kind"] != "Namespace" else None,
            missing_ok=True,
        )
        if live is None:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} missing")
        elif doc["kind"] in ("Service", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap"):
            key = "data" if doc["kind"] == "ConfigMap" else "spec"
            problems += [
                f"{doc['kind']}/{doc['metadata']['name']}{d}"
                for d in is_subset(doc[key], live[key], "." + key)
            ]
    assert not problems, "\n".join(problems)


def test_a_cat_photo_and_tritonclient_classify_through_the_serve_service(dev, cat_png):
    with port_forward(dev, f"svc/{NAME}-serve-svc", 8000) as port:
        print(f"\n{NAME}-serve-svc: {classify_cat(port, cat_png)}")


def test_the_users_smoke_test_passes_against_this_release(dev):
    """tests/smoke/test_cluster_smoke.py is what docs/SETUP.md gives users for their own cluster: it must
    pass, with nothing skipped, against this real install."""
    proc = run(
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "smoke",
        "-p",
        "no:cacheprovider",
        "-q",
        str(REPO / "tests" / "smoke" / "test_cluster_smoke.py"),
        check=False,
        timeout=900,
        env={"APP_NAMESPACE": dev, "RELEASE": RELEASE, "VALUES": ",".join(VALUES), "READY_TIMEOUT_S": "300"},
    )
    tail = proc.stdout[-3000:]
    assert proc.returncode == 0, tail
    assert "skipped" not in tail and " passed" in tail, tail


def model_user_config(ns: str) -> dict:
    return serve_applications(ns, NAME)["classifier"]["deployments"]["ImageClassifier"]["deployment_config"][
        "user_config"
    ]


def wait_upgrade_done(ns: str, old_cluster: str, timeout_s: float = 1200) -> str:
    """The RayService serves from a new cluster, is Ready, and the old cluster is gone."""

    def done():
        obj = rayservice(ns, NAME)
        new = active_cluster(ns, NAME)
        pending = (obj.get("status") or {}).get("pendingServiceStatus", {}).get("rayClusterName")
        names = {c["metadata"]["name"] for c in get("raycluster", namespace=ns)}
        # ... and its pods too, so the node has its CPU back for the next step.
        pods = {
            p["metadata"]["labels"].get("ray.io/cluster")
            for p in get("pods", namespace=ns, selector="ray.io/cluster")
        }
        ready = condition(obj, "Ready").get("status") == "True"
        return (
            new if new and new != old_cluster and not pending and ready and names == pods == {new} else None
        )

    return wait_for(done, timeout_s, f"the upgrade of {NAME} away from {old_cluster}", poll_s=5)


class ServeEndpoints:
    """Samples, every second, which Ray clusters the pods behind `<name>-serve-svc` belong to."""

    def __init__(self, ns: str):
        self.ns, self.seen, self._stop = ns, [], threading.Event()
        self.timeline: list[tuple[float, list[str]]] = []  # (wall time, clusters) at every change

    def _run(self) -> None:
        while not self._stop.is_set():
            pods = ready_endpoints(self.ns, f"{NAME}-serve-svc")
            owner = {
                p["metadata"]["name"]: p["metadata"]["labels"].get("ray.io/cluster")
                for p in get("pods", namespace=self.ns, selector="ray.io/cluster")
            }
            clusters = sorted({owner.get(p, "?") for p in pods})
            if not self.seen or self.seen[-1] != clusters:
                self.seen.append(clusters)
                self.timeline.append((time.time(), clusters))
            time.sleep(1)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def clock(at: float) -> str:
    """A wall-clock time as the operator's and the kubelet's logs and the events print it (UTC, ms)."""
    return f"{time.strftime('%H:%M:%S', time.gmtime(at))}.{int(at % 1 * 1000):03d}"


def timeline(load: Load, endpoints: ServeEndpoints, helm_at: float) -> str:
    """The helm command, the requests not answered 200 (when they ended) and the serve Service's
    endpoints at every change, in time order: what to lay beside the operator's log."""
    wall = time.time() - time.monotonic()
    lines = [f"{clock(helm_at)} helm"]
    lines += [
        f"{clock(end + wall)} request not answered 200 after {took:.2f} s"
        for end, took, ok in load.requests_log
        if not ok
    ]
    lines += [f"{clock(at)} serve Service endpoints: {clusters}" for at, clusters in endpoints.timeline]
    return "\n".join(sorted(lines))


def test_upgrade_and_rollback_under_load_fail_no_request(dev, cat_png, tmp_path):
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
    assert model_user_config(dev)["max_batch_size"] == 4
    steps = [
        (
            "upgrade 1.0 -> 1.1",
            ("upgrade", RELEASE, str(CHART), "-n", dev, "-f", str(REPO / VALUES[0]), "-f", str(v11)),
            new_tag,
            8,
        ),
        ("rollback 1.1 -> 1.0", ("rollback", RELEASE, "1", "-n", dev), old_tag, 4),
    ]
    with gateway(f"{NAME}-serve-svc.{dev}.svc.cluster.local:8000", image) as port:
        wait_http_ok(f"http://127.0.0.1:{port}/ready")
        for step, helm_args, want_tag, want_batch in steps:
            before = active_cluster(dev, NAME)
            start = time.monotonic()
            with (
                Load(
                    f"http://127.0.0.1:{port}/predict", cat_png, clients=2, max_seconds=1800, record=True
                ) as load,
                ServeEndpoints(dev) as endpoints,
            ):
                time.sleep(10)  # steady traffic before the change ...
                helm_at = time.time()
                helm(*helm_args)
                after = wait_upgrade_done(dev, before)
                time.sleep(10)  # ... and after it
            print(
                f"\n{step}: cluster {before} -> {after} in {time.monotonic() - start:.0f} s; {load.summary()}"
            )
            assert load.failed == 0, f"{load.summary()}\n{timeline(load, endpoints, helm_at)}"
            assert load.ok > 50, load.summary()
            # The serve Service (and so a LoadBalancer, which is this Service) never spans two clusters,
            # and is never without a ready pod: KubeRay moves it when the new cluster's apps are RUNNING,
            # before its workers' readiness probes pass; the head (in the Service) is ready by then.
            assert endpoints.seen and all(len(c) <= 1 for c in endpoints.seen), endpoints.seen
            assert [] not in endpoints.seen, timeline(load, endpoints, helm_at)
            assert [before] in endpoints.seen and [after] in endpoints.seen, endpoints.seen
            images = {
                c["image"]
                for p in get("pods", namespace=dev, selector=f"ray.io/cluster={after}")
                for c in p["spec"]["containers"]
            }
            assert images == {f"{repo}:{want_tag}"}, images
            assert model_user_config(dev)["max_batch_size"] == want_batch
