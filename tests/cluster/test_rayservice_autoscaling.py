"""Mode rayservice on the real cluster, with the real KubeRay operator and the Ray autoscaler sidecar:
helm-values/app-dev.yaml + app-dev-autoscaling.yaml (Serve autoscaling 2-4 model replicas, the Ray
autoscaler 1-2 workers), driven by the steps of bench/cluster_rayservice.py (which prints their
figures; the timings are not asserted here). Under a load from 127.0.0.1 through a gateway in front of
`<name>-serve-svc`: Serve wants more model replicas than the one worker holds, the autoscaler raises the
RayCluster's worker count, KubeRay creates the pod, Ray sees the node, a model replica runs and serves
there, and no request fails; without load Serve scales back and the idle worker is removed. Then an
update applied in place (`user_config`) fails no request and keeps the Ray cluster, and a deleted
worker pod is replaced and the service serves at full capacity again.
"""

from __future__ import annotations

import argparse

import pytest

from bench.cluster_rayservice import AUTOSCALING_VALUES, NAME, RELEASE, STEPS_DOWN, STEPS_UP, Bench
from harness.kubetest import (
    chart_default_image,
    cluster,  # noqa: F401 - fixture
    create_namespace,
    delete_namespace,
    gateway,
    get,
    install_until_ready,
    wait_for,
    wait_http_ok,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def bench(cluster, tmp_path_factory):  # noqa: F811
    ns = create_namespace("autoscale")
    try:
        install_until_ready(RELEASE, ns, NAME, *AUTOSCALING_VALUES)
        steps = Bench(
            argparse.Namespace(clients=2, spike_clients=10, out=tmp_path_factory.mktemp("rayservice"))
        )
        steps.ns = ns
        steps.replicas = wait_for(steps.running_replicas, 300, "the model replicas RUNNING", poll_s=3)
        with gateway(f"{NAME}-serve-svc.{ns}.svc.cluster.local:8000", chart_default_image()) as steps.port:
            wait_http_ok(f"http://127.0.0.1:{steps.port}/ready")
            yield steps
        print("\n" + steps.tl.text())
    finally:
        delete_namespace(ns)


def test_the_autoscaler_runs_beside_the_head_with_the_worker_bounds(bench):
    [raycluster] = get("raycluster", namespace=bench.ns)
    assert raycluster["spec"]["enableInTreeAutoscaling"] is True
    assert raycluster["spec"]["autoscalerOptions"]["version"] == "v2"
    group = raycluster["spec"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"], group["idleTimeoutSeconds"]) == (1, 2, 60), group
    [head] = get("pods", namespace=bench.ns, selector="ray.io/node-type=head")
    statuses = {s["name"]: s for s in head["status"]["containerStatuses"]}
    assert "autoscaler" in statuses, sorted(statuses)
    assert statuses["autoscaler"]["ready"] and statuses["autoscaler"]["restartCount"] == 0, statuses[
        "autoscaler"
    ]
    assert bench.replicas == 2


def test_load_scales_serve_then_ray_adds_a_worker_that_serves_and_it_goes_when_idle(bench):
    bench.autoscale()
    f = bench.figures["autoscaling"]
    steps = f["steps_s"]
    missing = [s for s in STEPS_UP + STEPS_DOWN if s not in steps]
    assert not missing, (missing, f)
    assert f["failed"] == 0 and f["requests"] > 100, f
    assert f["peak_target_replicas"] > 2 and f["peak_workers"] == 2, f
    # Each layer acts on what the one before it did.
    order = [
        "Serve autoscaling decision",
        "Ray autoscaler: RayCluster worker replicas raised",
        "model replica RUNNING on the new worker",
        "first request served on the new worker",
        "load stopped",
        "Serve scaled the model back down",
        "idle worker pod gone",
    ]
    assert [steps[s] for s in order] == sorted(steps[s] for s in order), steps
    pods = [
        p
        for p in get("pods", namespace=bench.ns, selector="ray.io/node-type=worker")
        if not p["metadata"].get("deletionTimestamp")
    ]
    assert len(pods) == 1 and pods[0]["metadata"]["name"] not in f["added_pods"], [
        p["metadata"]["name"] for p in pods
    ]


def test_an_update_applied_in_place_keeps_the_ray_cluster_and_fails_no_request(bench):
    bench.in_place_update()
    f = bench.figures["in_place_update"]
    assert f["same_ray_cluster"] and f["failed"] == 0 and f["requests"] > 20, f


def test_a_deleted_worker_pod_is_replaced_and_the_service_recovers(bench):
    """The one worker holds every model replica: while it is replaced, requests fail (docs/OPERATIONS.md
    says why and what clients do); afterwards the service answers and every replica runs again."""
    bench.pod_loss("worker")
    f = bench.figures["worker_loss"]
    assert f["full_capacity_s"] > 0 and f["answering_again_s"] >= 0, f
    assert f["requests"] > f["failed"], f
