"""The literal used-by path: `kubectl apply -f kuberay/rayservice.yaml` into a fresh namespace that
enforces Pod Security `restricted`, on the real cluster with the real KubeRay operator. It must work
the same way as the helm install: Ray cluster created, every pod admitted, RayService Ready, and a cat
photo and the OIP v2 tritonclient path classify through `<name>-serve-svc`.
"""

from __future__ import annotations

import time

import pytest
import yaml

from harness.kubetest import (
    REPO,
    classify_cat,
    cluster,  # noqa: F401 - fixture
    create_namespace,
    delete_namespace,
    get,
    kubectl,
    kuberay_events,
    port_forward,
    wait_rayservice_ready,
)

pytestmark = pytest.mark.cluster

MANIFEST = REPO / "kuberay" / "rayservice.yaml"


def manifest_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


@pytest.fixture(scope="module")
def applied(cluster):  # noqa: F811
    docs = manifest_docs()
    namespaced = [d for d in docs if d["metadata"].get("namespace")]
    assert not namespaced, f"the manifest pins namespaces: {[d['metadata'] for d in namespaced]}"
    [name] = [d["metadata"]["name"] for d in docs if d["kind"] == "RayService"]
    ns = create_namespace("manifest")
    try:
        start = time.monotonic()
        kubectl("apply", "-n", ns, "-f", str(MANIFEST))
        wait_rayservice_ready(ns, name, timeout_s=900)
        print(f"\nkubectl apply -> RayService Ready: {time.monotonic() - start:.0f} s")
        yield ns, name
    finally:
        delete_namespace(ns)


def test_the_operator_accepts_it_and_every_pod_is_admitted(applied):
    ns, name = applied
    assert "ValidationFailed" not in {e["reason"] for e in kuberay_events(ns, name)}
    refused = [
        e["message"]
        for e in get("events", namespace=ns)
        if e["reason"] == "FailedCreate" or "violates PodSecurity" in e.get("message", "")
    ]
    assert not refused, refused
    pods = get("pods", namespace=ns, selector="ray.io/is-ray-node=yes")
    assert sorted(p["metadata"]["labels"]["ray.io/node-type"] for p in pods) == ["head", "worker"]
    assert all(p["status"]["phase"] == "Running" for p in pods)


def test_every_object_of_the_manifest_exists(applied):
    ns, _ = applied
    missing = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in manifest_docs()
        if get(d["kind"].lower(), d["metadata"]["name"], ns, missing_ok=True) is None
    ]
    assert not missing, missing


def test_a_cat_photo_and_tritonclient_classify_through_the_serve_service(applied, cat_png):
    ns, name = applied
    with port_forward(ns, f"svc/{name}-serve-svc", 8000) as port:
        print(f"\n{name}-serve-svc: {classify_cat(port, cat_png)}")
