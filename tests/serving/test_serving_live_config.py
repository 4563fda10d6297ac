"""Live reconfiguration and overload (a full model queue, admission by expected wait), applied the KubeRay
way: a new Serve config PUT to the dashboard."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness.ray_cluster import load_serve_config
from harness.serving import (
    assert_serving_normally,
    metric_total,
    predict_file,
    settled_metric,
    wait_for_metric,
)


def deployment_config(config: dict, name: str) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def replicas(cluster, name: str) -> dict[str, int]:
    apps = cluster.http.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=10).json()
    deployment = apps["applications"]["classifier"]["deployments"][name]
    return {r["replica_id"]: r["pid"] for r in deployment["replicas"] if r["state"] == "RUNNING"}


def burst(base_url: str, data: bytes, clients: int, per_client: int) -> list[requests.Response]:
    def run(_):
        with requests.Session() as s:
            return [predict_file(s, base_url, data) for _ in range(per_client)]

    with ThreadPoolExecutor(clients) as pool:
        return [r for chunk in pool.map(run, range(clients)) for r in chunk]


def batch_stats(port: int) -> tuple[float, float]:
    return (
        metric_total(port, "ray_classifier_model_images_total"),
        metric_total(port, "ray_classifier_batch_size_count"),
    )


@pytest.fixture()
def restore_config(ray_cluster):
    yield
    ray_cluster.deploy(load_serve_config())


def test_batch_settings_change_live_without_restarting_replicas(
    ray_cluster, base_url, cat_png, http, restore_config
):
    port = ray_cluster.metrics_port
    before = replicas(ray_cluster, "ImageClassifier")
    ingress_before = replicas(ray_cluster, "ImageIngress")
    config = load_serve_config()
    deployment_config(config, "ImageClassifier")["user_config"] = {
        "max_batch_size": 1,
        "batch_wait_timeout_s": 0.0,
    }
    deployment_config(config, "ImageIngress")["user_config"]["max_images_per_model_call"] = 1
    ray_cluster.deploy(config)
    settled_metric(port, "ray_classifier_model_images_total")  # earlier tests' batches exported
    images0, batches0 = batch_stats(port)
    assert all(r.status_code == 200 for r in burst(base_url, cat_png, clients=8, per_client=3))
    wait_for_metric(port, "ray_classifier_model_images_total", images0 + 24)
    wait_for_metric(port, "ray_classifier_batch_size_count", batches0 + 24)
    images, batches = batch_stats(port)
    assert images - images0 == 24 and batches - batches0 == 24, "max_batch_size=1: one image per batch"
    assert replicas(ray_cluster, "ImageClassifier") == before, "user_config must not restart replicas"
    assert replicas(ray_cluster, "ImageIngress") == ingress_before
    assert_serving_normally(http, base_url, cat_png)


def test_full_queue_answers_503_fast_with_retry_after(ray_cluster, base_url, cat_png, http, restore_config):
    config = copy.deepcopy(load_serve_config())
    model = deployment_config(config, "ImageClassifier")
    model.update(max_ongoing_requests=1, max_queued_requests=1)
    model["user_config"] = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
    deployment_config(config, "ImageIngress")["user_config"]["max_images_per_model_call"] = 1
    ray_cluster.deploy(config)
    responses = burst(base_url, cat_png, clients=24, per_client=2)
    codes = sorted({r.status_code for r in responses})
    assert codes == [200, 503], codes
    rejected = [r for r in responses if r.status_code == 503]
    for response in rejected:
        assert response.json()["error"]["code"] == "overloaded"
        assert int(response.headers["Retry-After"]) >= 1
    # Rejections are immediate: each is answered well before the slowest successful request.
    slowest_ok = max(r.elapsed.total_seconds() for r in responses if r.status_code == 200)
    assert min(r.elapsed.total_seconds() for r in rejected) < slowest_ok
    assert_serving_normally(http, base_url, cat_png)


def test_admission_refuses_at_once_what_would_wait_past_the_limit(
    ray_cluster, base_url, cat_png, http, restore_config
):
    """Admission by expected wait (serve_app.admission): with a slow model (one image per forward) and
    a 0.2 s limit, 64 clients are far past what the replicas answer in time; once the ingress has
    learned its rate, the excess gets an immediate 503 overloaded with Retry-After, the rest is served,
    and nothing else fails."""
    config = copy.deepcopy(load_serve_config())
    deployment_config(config, "ImageClassifier")["user_config"] = {
        "max_batch_size": 1,
        "batch_wait_timeout_s": 0.0,
    }
    deployment_config(config, "ImageIngress")["user_config"].update(
        max_images_per_model_call=1, max_expected_wait_s=0.2
    )
    ray_cluster.deploy(config)
    responses = burst(base_url, cat_png, clients=64, per_client=8)
    ok = [r for r in responses if r.status_code == 200]
    shed = [r for r in responses if r.status_code == 503]
    assert len(ok) + len(shed) == len(responses), sorted({r.status_code for r in responses})
    assert ok and shed, f"{len(ok)} served, {len(shed)} refused"
    for response in shed:
        assert response.json()["error"]["code"] == "overloaded"
        assert "expected wait" in response.json()["error"]["message"]
        assert int(response.headers["Retry-After"]) >= 1
    # These clients come straight back instead of waiting: the refused pile up, and Retry-After grows
    # past a second towards when they would get a turn (at most max_retry_after_s, 10 by default).
    retry_after = [int(r.headers["Retry-After"]) for r in shed]
    assert 1 < max(retry_after) <= 10, sorted(set(retry_after))
    # Refused before any decoding or queueing: faster than what was served.
    elapsed = sorted(r.elapsed.total_seconds() for r in shed)
    served = sorted(r.elapsed.total_seconds() for r in ok)
    assert elapsed[len(elapsed) // 2] < served[len(served) // 2]
    assert_serving_normally(http, base_url, cat_png)
