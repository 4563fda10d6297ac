"""What KubeRay 1.6.2 really does with the chart, on the real cluster: the defects found by reading its
source, each checked where only a real operator can show it (each check failed before its fix):

- worker PodDisruptionBudget: with maxUnavailable the disruption controller allowed no eviction of
  RayCluster-owned pods (no scale subresource); integer minAvailable lets one go at a time;
- LoadBalancer: KubeRay's own serve Service (spec.serveService), selecting only the serving cluster;
- worker min/max through `helm upgrade` are ignored on a running cluster; the runbook's patch works;
- the head declares every port its PodMonitor scrapes, and each answers with metrics;
- autoscaler v2: Ray pods have restartPolicy Never; a crashed Ray container gets a new pod, never a
  restart (so restart-count alerts cannot fire for Ray pods);
- incremental upgrades: KubeRay serves through its own Gateway and per-cluster Services;
- ray.io/initializing-timeout is terminal until the RayService is recreated;
- names over 47 characters are refused by the chart, as KubeRay would.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from harness.kubetest import (
    REPO,
    active_cluster,
    chart_default_image,
    cluster,  # noqa: F401 - fixture
    condition,
    create_namespace,
    delete_namespace,
    get,
    helm,
    helm_install,
    is_ready,
    kubectl,
    kuberay_events,
    live_pods,
    namespace,
    rayservice,
    wait_for,
    wait_rayservice_ready,
)

pytestmark = pytest.mark.cluster

RELEASE = "classifier"
NAME = "classifier-ray-serve-image-classifier"
DEV = "helm-values/app-dev.yaml"


def workers(ns: str, ready: bool | None = None) -> list[dict]:
    pods = list(live_pods(ns, "ray.io/node-type=worker").values())
    if ready is not None:
        pods = [p for p in pods if is_ready(p) == ready]
    return pods


def started(pod: dict) -> bool:
    """Every container running. A new worker is not Ready until Serve places a replica on it (KubeRay's
    worker probe asks the node's Serve proxy, which runs only beside replicas), so a replacement worker
    may stay unready while the replicas it lost run elsewhere: "replaced" means started."""
    statuses = pod["status"].get("containerStatuses") or []
    return bool(statuses) and all("running" in c.get("state", {}) for c in statuses)


def head(ns: str) -> dict:
    [pod] = get("pods", namespace=ns, selector="ray.io/node-type=head")
    return pod


def evict(ns: str, pod: str) -> tuple[str, str]:
    """POST an Eviction; returns ("Created", output) or the API's reason ("TooManyRequests": the budget
    refused) with kubectl's message. kubectl prints a refused request as `Error from server (Reason): …`."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}}
    proc = kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{ns}/pods/{pod}/eviction",
        "-f",
        "-",
        input=json.dumps(body),
        check=False,
    )
    if proc.returncode == 0:
        return "Created", proc.stdout
    reason = re.search(r"Error from server \((\w+)\)", proc.stderr)
    return (reason.group(1) if reason else "unknown"), proc.stderr


# --- one RayService with the autoscaler (v2), two workers, the worker PDB and a LoadBalancer -------------
OPERATIONS_SETS = (
    "ray.autoscaler.enabled=true",
    "ray.worker.replicas=2",
    "ray.worker.minReplicas=2",
    "ray.worker.maxReplicas=2",
    "podDisruptionBudget.enabled=true",
    "loadBalancer.enabled=true",
)


@pytest.fixture(scope="class")
def ops(cluster):  # noqa: F811
    ns = create_namespace("ops")
    try:
        helm_install(RELEASE, ns, DEV, sets=OPERATIONS_SETS)
        wait_rayservice_ready(ns, NAME, timeout_s=900)
        wait_for(lambda: len(workers(ns, ready=True)) == 2, 600, "two ready workers")
        yield ns
    finally:
        delete_namespace(ns)


class TestOneRayServiceWithTwoWorkers:
    """One RayService shared by these tests; its namespace (head + two workers: most of this node) is
    deleted after the last of them, before the module's other RayServices need the room."""

    def test_head_declares_and_serves_every_port_the_head_podmonitor_scrapes(self, ops):
        monitor = yaml.safe_load((REPO / "monitoring" / "podmonitor-ray-head.yaml").read_text())
        names = [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
        pod = head(ops)
        declared = {
            p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])
        }
        assert set(names) <= set(declared), f"PodMonitor ports {names}, head declares {sorted(declared)}"
        for name in names:

            def scraped(port=declared[name]):
                proc = kubectl(
                    "get",
                    "--raw",
                    f"/api/v1/namespaces/{ops}/pods/{pod['metadata']['name']}:{port}/proxy/metrics",
                    check=False,
                )
                return proc.returncode == 0 and "# TYPE" in proc.stdout

            wait_for(scraped, 120, f"metrics on the head's {name} port ({declared[name]})", poll_s=5)

    def test_autoscaler_v2_ray_pods_never_restart(self, ops):
        pods = [head(ops)] + workers(ops)
        assert {p["spec"]["restartPolicy"] for p in pods} == {"Never"}, [
            (p["metadata"]["name"], p["spec"]["restartPolicy"]) for p in pods
        ]

    def test_load_balancer_is_kuberays_serve_service_on_the_serving_cluster_only(self, ops):
        svc = get("service", f"{NAME}-serve-svc", ops)
        assert svc["spec"]["type"] == "LoadBalancer", svc["spec"]
        assert svc["spec"]["selector"] == {
            "ray.io/cluster": active_cluster(ops, NAME),
            "ray.io/serve": "true",
        }
        assert get("service", f"{NAME}-lb", ops, missing_ok=True) is None
        slices = get("endpointslices", namespace=ops, selector=f"kubernetes.io/service-name={NAME}-serve-svc")
        pods = {e["targetRef"]["name"] for s in slices for e in s.get("endpoints") or []}
        # The ready workers and the head (its Serve proxy checked by the operator: the Service's
        # endpoint at the moment an upgrade moves it, before the new workers' probes pass).
        want = {p["metadata"]["name"] for p in workers(ops, ready=True)} | {head(ops)["metadata"]["name"]}
        assert pods == want, pods

    def test_worker_pdb_lets_a_drain_take_one_worker_at_a_time(self, ops):
        [pdb] = get("pdb", namespace=ops)
        pdb = wait_for(
            lambda: (
                (p := get("pdb", pdb["metadata"]["name"], ops))["status"].get("disruptionsAllowed") == 1 and p
            ),
            120,
            "the worker PDB to allow one disruption",
        )
        assert condition(pdb, "DisruptionAllowed").get("status") == "True", pdb["status"]
        first, second = [p["metadata"]["name"] for p in workers(ops, ready=True)]
        outcome, out = evict(ops, first)
        assert outcome == "Created", out
        outcome, out = evict(ops, second)
        assert outcome == "TooManyRequests", f"a second eviction must wait for the budget: {outcome} {out}"
        wait_for(
            lambda: (
                first not in {p["metadata"]["name"] for p in workers(ops)}
                and len([p for p in workers(ops) if started(p)]) == 2
            ),
            600,
            "KubeRay to replace the evicted worker",
        )

    def test_worker_bounds_reach_a_running_cluster_only_through_the_runbooks_patch(self, ops):
        cluster_name = active_cluster(ops, NAME)
        group = lambda: get("raycluster", cluster_name, ops)["spec"]["workerGroupSpecs"][0]  # noqa: E731
        assert (group()["minReplicas"], group()["maxReplicas"]) == (2, 2)
        helm(
            "upgrade",
            RELEASE,
            str(REPO / "kuberay" / "chart"),
            "-n",
            ops,
            "--reuse-values",
            "--set",
            "ray.worker.maxReplicas=3",
        )
        time.sleep(45)
        status = rayservice(ops, NAME)["status"]
        assert not status.get("pendingServiceStatus", {}).get("rayClusterName"), status
        assert active_cluster(ops, NAME) == cluster_name
        assert group()["maxReplicas"] == 2, (
            "helm upgrade alone reached the running cluster (the runbook says it does not)"
        )
        # docs/OPERATIONS.md's patch, with this cluster's bounds.
        runbook = (
            (REPO / "docs" / "OPERATIONS.md")
            .read_text()
            .split("**Changing the worker bounds of a running RayService**", 1)[1]
        )
        operations = json.loads(re.search(r"-p='(\[.*?\])'", runbook, re.DOTALL).group(1))
        wanted = {"/spec/workerGroupSpecs/0/minReplicas": 2, "/spec/workerGroupSpecs/0/maxReplicas": 3}
        assert {op["path"] for op in operations} == set(wanted)
        for op in operations:
            op["value"] = wanted[op["path"]]
        kubectl("patch", "raycluster", cluster_name, "-n", ops, "--type=json", "-p", json.dumps(operations))
        time.sleep(30)
        assert (group()["minReplicas"], group()["maxReplicas"]) == (2, 3), group()
        assert active_cluster(ops, NAME) == cluster_name
        assert not rayservice(ops, NAME)["status"].get("pendingServiceStatus", {}).get("rayClusterName")

    def test_a_crashed_ray_container_gets_a_new_pod_not_a_restart(self, ops):
        victim = [p for p in workers(ops) if started(p)][0]["metadata"]["name"]
        # A crash of the node's raylet: `ray start --block` (the container's process) sees a Ray process
        # die and exits 1. Killing `ray start` itself does nothing: as PID 1 of its container it ignores
        # SIGKILL sent from inside.
        kill = (
            'for d in /proc/[0-9]*; do [ "${d#/proc/}" = $$ ] && continue; '
            "case \"$(tr '\\0' ' ' < $d/cmdline 2>/dev/null)\" in "
            "*/raylet/raylet\\ *) kill -9 ${d#/proc/};; esac; done"
        )
        kubectl("exec", "-n", ops, victim, "-c", "ray-worker", "--", "/bin/sh", "-c", kill, check=False)
        wait_for(
            lambda: victim not in {p["metadata"]["name"] for p in workers(ops)},
            120,
            f"KubeRay to replace {victim}",
        )
        cluster_name = active_cluster(ops, NAME)
        events = [
            e
            for e in get("events", namespace=ops)
            if e["involvedObject"].get("name") == cluster_name
            and e["reason"] == "DeletedWorkerPod"
            and victim in e["message"]
        ]
        assert events, "no DeletedWorkerPod event for the crashed worker"
        wait_for(lambda: len([p for p in workers(ops) if started(p)]) == 2, 600, "two running workers again")
        restarts = {
            p["metadata"]["name"]: [s["restartCount"] for s in p["status"].get("containerStatuses") or []]
            for p in workers(ops) + [head(ops)]
        }
        assert all(n == 0 for counts in restarts.values() for n in counts), restarts
        print(f"\n{victim} replaced: {events[0]['message'][:200]}; restart counts {restarts}")


# --- incremental upgrades ------------------------------------------------------------------------------------
INCREMENTAL_SETS = (
    "ray.autoscaler.enabled=true",
    "ray.upgradeStrategy.type=NewClusterWithIncrementalUpgrade",
    "ray.upgradeStrategy.clusterUpgradeOptions.gatewayClassName=test-gateway-class",
    "ray.upgradeStrategy.clusterUpgradeOptions.stepSizePercent=50",
    "ray.upgradeStrategy.clusterUpgradeOptions.intervalSeconds=30",
    "ray.upgradeStrategy.clusterUpgradeOptions.maxSurgePercent=50",
)


def test_incremental_upgrades_serve_through_kuberays_gateway_and_per_cluster_services(cluster):  # noqa: F811
    with namespace("incremental") as ns:
        refused = helm(
            "install",
            RELEASE,
            str(REPO / "kuberay" / "chart"),
            "-n",
            ns,
            "-f",
            str(REPO / DEV),
            *[a for s in INCREMENTAL_SETS + ("httpRoute.enabled=true",) for a in ("--set", s)],
            check=False,
        )
        assert refused.returncode != 0 and "gateway" in refused.stderr.lower(), refused.stderr
        assert get("rayservice", namespace=ns) == []
        helm_install(RELEASE, ns, DEV, sets=INCREMENTAL_SETS)
        route = wait_for(
            lambda: get("httproute", f"{NAME}-httproute", ns, missing_ok=True),
            900,
            f"KubeRay's HTTPRoute {NAME}-httproute",
            poll_s=5,
        )
        gateway = get("gateway", f"{NAME}-gateway", ns)
        assert gateway["spec"]["gatewayClassName"] == "test-gateway-class"
        assert [(x["name"], x["port"]) for x in gateway["spec"]["listeners"]] == [("http", 80)]
        backends = [b["name"] for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
        cluster_name = wait_for(lambda: active_cluster(ns, NAME), 600, "a serving cluster")
        assert f"{cluster_name}-serve-svc" in backends, backends
        assert get("service", f"{cluster_name}-serve-svc", ns, missing_ok=True) is not None
        assert get("service", f"{NAME}-serve-svc", ns, missing_ok=True) is None
        print(f"\nGateway {NAME}-gateway, HTTPRoute backends {backends}")


# --- ray.io/initializing-timeout ---------------------------------------------------------------------------
def test_initializing_timeout_is_terminal_until_the_rayservice_is_recreated(cluster):  # noqa: F811
    good_tag = chart_default_image().rsplit(":", 1)[1]
    with namespace("init-timeout") as ns:
        plain = helm("template", RELEASE, str(REPO / "kuberay" / "chart"), "-f", str(REPO / DEV)).stdout
        assert "ray.io/initializing-timeout" not in plain, "the chart sets the terminal timeout by default"
        helm(
            "install",
            RELEASE,
            str(REPO / "kuberay" / "chart"),
            "-n",
            ns,
            "-f",
            str(REPO / DEV),
            "--set-string",
            "ray.initializingTimeout=30s",
            "--set",
            "ray.rayClusterDeletionDelaySeconds=0",
            "--set",
            "image.tag=does-not-exist",
        )
        obj = wait_for(
            lambda: (
                (o := rayservice(ns, NAME))
                and condition(o, "Ready").get("reason") == "InitializingTimeout"
                and o
            ),
            180,
            "InitializingTimeout",
        )
        assert any(e["reason"] == "RayServiceInitializingTimeout" for e in kuberay_events(ns, NAME))
        wait_for(lambda: get("raycluster", namespace=ns) == [], 120, "KubeRay to delete the clusters")
        # A fixed spec does not bring it back ...
        helm(
            "upgrade",
            RELEASE,
            str(REPO / "kuberay" / "chart"),
            "-n",
            ns,
            "--reuse-values",
            "--set",
            f"image.tag={good_tag}",
        )
        time.sleep(45)
        assert get("raycluster", namespace=ns) == [], "KubeRay reconciled a timed-out RayService again"
        assert condition(rayservice(ns, NAME), "Ready").get("reason") == "InitializingTimeout"
        # ... recreating the RayService does (docs/TROUBLESHOOTING.md's recovery).
        kubectl("delete", "rayservice", NAME, "-n", ns, "--wait=true", timeout=300)
        helm(
            "upgrade",
            RELEASE,
            str(REPO / "kuberay" / "chart"),
            "-n",
            ns,
            "--reuse-values",
            "--set-string",
            "ray.initializingTimeout=",
        )
        wait_for(
            lambda: get("raycluster", namespace=ns), 120, "a new Ray cluster after recreating the RayService"
        )
        print(f"\ntimed out: {obj['status']['conditions']}")


# --- names ------------------------------------------------------------------------------------------------------
def test_names_kuberay_refuses_are_refused_by_the_chart_and_47_characters_work(cluster):  # noqa: F811
    base = "ray-serve-image-classifier-"
    with namespace("names") as ns:
        too_long = base + "x" * (48 - len(base))
        refused = helm(
            "install", too_long, str(REPO / "kuberay" / "chart"), "-n", ns, "-f", str(REPO / DEV), check=False
        )
        assert refused.returncode != 0 and "47" in refused.stderr, refused.stderr
        assert get("rayservice", namespace=ns) == []
        longest = base + "y" * (47 - len(base))
        helm_install(longest, ns, DEV)
        [created] = wait_for(lambda: get("raycluster", namespace=ns), 120, f"a Ray cluster for {longest}")
        assert created["metadata"]["ownerReferences"][0]["name"] == longest
        assert "ValidationFailed" not in {e["reason"] for e in kuberay_events(ns, longest)}
