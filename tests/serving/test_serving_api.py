"""The REST API against a real Ray Serve: real HTTP, real weights, real photos."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from harness.images import CAT_LABELS
from harness.serving import metric_total, predict_file, settled_metric, top1, wait_for_metric
from serve_app.request_parsing import JsonPredictBody


def test_cat_photo_is_a_cat(http, base_url, cat_png):
    response = predict_file(http, base_url, cat_png)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "mobilenet_v2" and body["model_version"] == "IMAGENET1K_V1"
    assert top1(body) in CAT_LABELS
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert {"label", "class_id", "score"} == set(body["predictions"][0])


def test_coffee_photo_is_espresso_from_a_raw_body(http, base_url, coffee_png):
    response = http.post(
        f"{base_url}/predict", data=coffee_png, headers={"Content-Type": "image/png"}, params={"top_k": 2}
    )
    assert response.status_code == 200
    body = response.json()
    assert top1(body) == "espresso" and len(body["predictions"]) == 2


def test_top_k_from_form_and_json(http, base_url, cat_png):
    form = http.post(f"{base_url}/predict", files={"file": ("c.png", cat_png)}, data={"top_k": "7"})
    assert len(form.json()["predictions"]) == 7
    js = http.post(f"{base_url}/predict", json={"image": base64.b64encode(cat_png).decode(), "top_k": 1000})
    assert len(js.json()["predictions"]) == 1000
    assert abs(sum(p["score"] for p in js.json()["predictions"]) - 1.0) < 1e-3


def test_multi_image_request_equals_single_requests(http, base_url, cat_png, coffee_png, hopper_jpg):
    photos = [cat_png, coffee_png, hopper_jpg]
    singles = [predict_file(http, base_url, p).json() for p in photos]
    multipart = http.post(f"{base_url}/predict", files=[("file", (f"{i}", p)) for i, p in enumerate(photos)])
    as_json = http.post(
        f"{base_url}/predict", json={"images": [base64.b64encode(p).decode() for p in photos]}
    )
    for response in (multipart, as_json):
        assert response.status_code == 200
        results = response.json()
        assert isinstance(results, list) and len(results) == 3
        for got, want in zip(results, singles, strict=True):
            assert [p["class_id"] for p in got["predictions"]] == [p["class_id"] for p in want["predictions"]]
            np.testing.assert_allclose(
                [p["score"] for p in got["predictions"]], [p["score"] for p in want["predictions"]], atol=1e-5
            )


def test_service_info_and_probes(http, base_url):
    info = http.get(f"{base_url}/").json()
    assert info["model"] == "mobilenet_v2" and info["num_classes"] == 1000
    assert info["input_size"] == [3, 224, 224]
    assert info["max_body_bytes"] == 10 * 1024 * 1024 and info["max_images_per_request"] == 64
    assert http.get(f"{base_url}/health").json() == {"status": "ok"}
    assert http.get(f"{base_url}/ready").json() == {"status": "ready"}


def without_none(value):
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    return [without_none(v) for v in value] if isinstance(value, list) else value


def test_openapi_documents_the_routes(http, base_url):
    spec = http.get(f"{base_url}/openapi.json").json()
    for path in ("/predict", "/", "/health", "/ready", "/v2/models/{model_name}/infer"):
        assert path in spec["paths"]
    predict = spec["paths"]["/predict"]["post"]
    body = predict["requestBody"]["content"]
    assert {"multipart/form-data", "image/*", "application/json"} <= set(body)
    # Generated from the model that parses the JSON body, not a hand copy of it (the OpenAPI document
    # leaves out null defaults).
    model = without_none(JsonPredictBody.model_json_schema())
    assert body["application/json"]["schema"] == model
    assert body["multipart/form-data"]["schema"]["properties"]["top_k"] == model["properties"]["top_k"]
    assert "ImageResult" in json.dumps(predict["responses"]["200"])
    assert http.get(f"{base_url}/docs").status_code == 200


def test_concurrent_requests_form_batches(ray_cluster, base_url, cat_png):
    port = ray_cluster.metrics_port
    images0 = settled_metric(port, "ray_classifier_model_images_total")
    batches0 = metric_total(port, "ray_classifier_batch_size_count")
    singles0 = metric_total(port, "ray_classifier_batch_size_bucket", le="1.0")

    def one(_):
        with requests.Session() as s:
            return [predict_file(s, base_url, cat_png).status_code for _ in range(4)]

    with ThreadPoolExecutor(16) as pool:
        codes = [c for chunk in pool.map(one, range(16)) for c in chunk]
    assert codes == [200] * 64
    images = wait_for_metric(port, "ray_classifier_model_images_total", images0 + 64) - images0
    batches = wait_for_metric(port, "ray_classifier_batch_size_count", batches0 + 1) - batches0
    multi = batches - (metric_total(port, "ray_classifier_batch_size_bucket", le="1.0") - singles0)
    assert images == 64
    # 16 concurrent clients against 2 replicas: the batcher must have grouped requests.
    assert multi > 0 and images / batches > 1, f"{images} images in {batches} batches, {multi} of size > 1"
