"""Every manifest a user applies, judged by the real API server and the real KubeRay operator:
`kubectl apply -k monitoring/` for real (the Prometheus operator's CRDs are installed), the chart's
HTTPRoute and Ingress by server-side dry run (no Gateway or Ingress controller runs here), and every
shipped values file installed for real into a namespace enforcing Pod Security `restricted`: the
operator validates the RayService and creates the Ray cluster, and every pod it (or the Deployment)
creates is admitted, even where this one 2-CPU node cannot schedule them all.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

from harness.kubetest import (
    REPO,
    chart_default_image,
    cluster,  # noqa: F401 - fixture
    get,
    helm,
    helm_install,
    kubectl,
    kuberay_events,
    namespace,
    render,
    wait_for,
)

pytestmark = pytest.mark.cluster

RELEASE = "classifier"
NAME = "classifier-ray-serve-image-classifier"


def test_monitoring_kustomization_applies_for_real(cluster):  # noqa: F811
    with namespace("monitoring-test") as ns:
        kubectl("apply", "--server-side", "-k", str(REPO / "monitoring"), "-n", ns)
        built = kubectl("kustomize", str(REPO / "monitoring")).stdout
        import yaml

        docs = [d for d in yaml.safe_load_all(built) if d]
        missing = [
            f"{d['kind']}/{d['metadata']['name']}"
            for d in docs
            if get(
                f"{d['kind'].lower()}.{d['apiVersion'].split('/')[0]}"
                if "/" in d["apiVersion"]
                else d["kind"].lower(),
                d["metadata"]["name"],
                ns,
                missing_ok=True,
            )
            is None
        ]
        assert not missing, missing
        kinds = sorted({d["kind"] for d in docs})
        assert {"PodMonitor", "PrometheusRule", "ConfigMap"} <= set(kinds), kinds
        print(f"\nmonitoring/: {len(docs)} objects applied ({', '.join(kinds)})")


@pytest.mark.parametrize("mode", ["rayservice", "deployment"])
def test_httproute_and_ingress_pass_server_side_dry_run(cluster, mode):  # noqa: F811
    with namespace(f"frontdoor-{mode}") as ns:
        docs = render(
            RELEASE,
            ns,
            sets=(
                f"mode={mode}",
                "httpRoute.enabled=true",
                "ingress.enabled=true",
                "loadBalancer.enabled=true",
            ),
        )
        kinds = {d["kind"] for d in docs}
        assert {"HTTPRoute", "Ingress"} <= kinds, kinds
        out = kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "-n",
            ns,
            "-f",
            "-",
            input="\n---\n".join(json.dumps(d) for d in docs),
        ).stdout
        assert "httproute.gateway.networking.k8s.io/" in out and "ingress.networking.k8s.io/" in out, out


# app-dev-*.yaml are layers on app-dev.yaml, installed with it for real by their own tests
# (app-dev-autoscaling.yaml: test_rayservice_autoscaling.py).
SHIPPED = sorted(
    p.name for p in (REPO / "helm-values").glob("app-*.yaml") if not p.name.startswith("app-dev-")
)


@pytest.mark.parametrize("values", SHIPPED)
def test_every_shipped_values_file_is_reconciled_and_admitted(cluster, values):  # noqa: F811
    """Install for real; the operator (rayservice) or the ReplicaSet (deployment) must create pods
    that Pod Security admits. Images are the local one: nothing is pulled here."""
    import yaml

    mode = yaml.safe_load((REPO / "helm-values" / values).read_text()).get("mode", "rayservice")
    repo, tag = chart_default_image().rsplit(":", 1)
    with namespace(f"values-{values.removeprefix('app-').removesuffix('.yaml')}") as ns:
        if values == "app-prod.yaml":  # the Redis password the GCS fault tolerance options name
            kubectl("create", "secret", "generic", "ray-gcs-redis", "-n", ns, "--from-literal=password=test")
        installed = helm_install(
            RELEASE, ns, f"helm-values/{values}", sets=(f"image.repository={repo}", f"image.tag={tag}")
        )
        if mode == "rayservice":

            def cluster_created():
                events = kuberay_events(ns, NAME)
                failed = [
                    e["message"]
                    for e in events
                    if e["reason"] in ("ValidationFailed", "InvalidRayServiceSpec")
                ]
                assert not failed, failed
                return get("raycluster", namespace=ns)

            [raycluster] = wait_for(cluster_created, 120, f"KubeRay to create the Ray cluster for {values}")
            pods = wait_for(
                lambda: get(
                    "pods", namespace=ns, selector=f"ray.io/cluster={raycluster['metadata']['name']}"
                ),
                120,
                "the Ray pods",
            )
            if values == "app-prod.yaml":
                # GCS fault tolerance: the Redis keyspace is this cluster's own (KubeRay uses its UID
                # unless a fixed namespace is set; a fixed one is shared by the old and the new cluster
                # of an upgrade, and the old one's Redis cleanup Job wipes it).
                uid = raycluster["metadata"]["uid"]
                assert "ray.io/gcs-ft-redis-cleanup-finalizer" in raycluster["metadata"].get("finalizers", [])
                [head] = [p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head"]
                assert head["metadata"]["annotations"]["ray.io/external-storage-namespace"] == uid
                env = {e["name"]: e.get("value") for e in head["spec"]["containers"][0]["env"]}
                assert env["RAY_external_storage_namespace"] == uid
        else:
            pods = wait_for(
                lambda: get("pods", namespace=ns, selector="app.kubernetes.io/component=serve"),
                120,
                "the Deployment's pods",
            )
        refused = [
            e["message"]
            for e in get("events", namespace=ns)
            if e["reason"] == "FailedCreate" or "violates PodSecurity" in e.get("message", "")
        ]
        assert not refused, refused
        print(f"\n{values}: {len(pods)} pod(s) admitted: {[p['metadata']['name'] for p in pods]}")
        if values == "app-prod.yaml":
            uninstall_with_gcs_fault_tolerance(ns, raycluster["metadata"]["name"], installed.stdout)


def uninstall_with_gcs_fault_tolerance(ns: str, raycluster: str, notes: str) -> None:
    """The uninstall NOTES.txt prints with GCS FT on, run as printed: the RayService first, then wait for
    its Ray clusters, then the release. KubeRay stops the pods and runs its Redis cleanup Job while the
    release's ServiceAccount still exists (here the Job fails, as no Redis runs) and then drops the
    finalizer. `helm uninstall` first deletes that ServiceAccount, and the Job's pod is refused."""
    block = notes.split("Uninstall (GCS fault tolerance is on)", 1)[1]
    commands = [
        shlex.split(line) for line in block.splitlines() if line.strip().startswith(("kubectl ", "helm "))
    ]
    assert [c[:4] for c in commands] == [
        ["kubectl", "-n", ns, "delete"],
        ["kubectl", "-n", ns, "wait"],
        ["helm", "-n", ns, "uninstall"],
    ], commands
    started = time.monotonic()
    kubectl(*commands[0][1:], timeout=300)
    kubectl(*commands[1][1:], timeout=660)
    cleaned = time.monotonic() - started
    job = f"{raycluster}-redis-cleanup"
    events = get("events", namespace=ns)
    assert any(
        e["reason"] == "CreatedRedisCleanupJob" and e["involvedObject"]["name"] == raycluster for e in events
    )
    ran = [
        e for e in events if e["involvedObject"]["name"].startswith(f"{job}-") and e["reason"] == "Started"
    ]
    refused = [
        e["message"] for e in events if e["involvedObject"]["name"] == job and e["reason"] == "FailedCreate"
    ]
    assert ran and not refused, (ran, refused)
    # The Job failed by itself (its pod exited 1: no Redis), not at its 300 s deadline, and KubeRay
    # dropped the finalizer for that, not by its timeout.
    assert any(
        e["involvedObject"]["name"] == job and e["reason"] == "BackoffLimitExceeded" for e in events
    ), [(e["involvedObject"]["name"], e["reason"]) for e in events]
    forced = [e["message"] for e in events if e["reason"] == "ForceDeletedStuckCluster"]
    assert not forced, forced
    helm(*commands[2][1:])
    assert (
        get("rayservice", namespace=ns) == []
        and get("serviceaccounts", namespace=ns, selector="app.kubernetes.io/instance=" + RELEASE) == []
    )
    print(
        f"GCS FT uninstall as NOTES.txt prints it: Ray cluster and its Redis cleanup Job ({job}: ran, "
        f"failed without Redis) gone in {cleaned:.0f} s"
    )
