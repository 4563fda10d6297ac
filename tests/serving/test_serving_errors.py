"""Bad input gets a clear 4xx JSON error, never a stack trace, and the server keeps serving."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image

from harness.images import encode
from harness.serving import assert_serving_normally


def big_png() -> bytes:
    return encode(Image.new("L", (7000, 7000)), "PNG")  # 49 MP in a few kB


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CASES = {
    # name: (request kwargs builder, expected status, expected code)
    "garbage-image": (
        lambda c: {"data": b"garbage", "headers": {"Content-Type": "image/png"}},
        400,
        "invalid_image",
    ),
    "truncated-png": (lambda c: {"files": {"file": ("c.png", c[: len(c) // 2])}}, 400, "invalid_image"),
    "bad-base64": (lambda c: {"json": {"image": "!!not-base64!!"}}, 400, "bad_request"),
    "bad-json": (
        lambda c: {"data": b"{oops", "headers": {"Content-Type": "application/json"}},
        400,
        "bad_request",
    ),
    "body-too-large": (
        lambda c: {"data": b"\0" * (10 * 1024 * 1024 + 1), "headers": {"Content-Type": "image/png"}},
        413,
        "payload_too_large",
    ),
    "too-many-images": (lambda c: {"json": {"images": [b64(b"x")] * 65}}, 413, "too_many_images"),
    "pixel-bomb": (
        lambda c: {"data": big_png(), "headers": {"Content-Type": "image/png"}},
        413,
        "image_too_large",
    ),
    "text-plain": (
        lambda c: {"data": b"hello", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    "ppm-image": (
        lambda c: {
            "data": encode(Image.new("RGB", (9, 9)), "PPM"),
            "headers": {"Content-Type": "image/x-ppm"},
        },
        415,
        "unsupported_media_type",
    ),
    "top-k-zero": (
        lambda c: {"files": {"file": ("c.png", c)}, "params": {"top_k": 0}},
        422,
        "invalid_parameter",
    ),
    "top-k-text": (
        lambda c: {"files": {"file": ("c.png", c)}, "params": {"top_k": "many"}},
        422,
        "invalid_parameter",
    ),
    "top-k-form": (
        lambda c: {"files": {"file": ("c.png", c)}, "data": {"top_k": "5000"}},
        422,
        "invalid_parameter",
    ),
    "no-file-field": (lambda c: {"files": {"image": ("c.png", c)}}, 422, "invalid_parameter"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_predict_requests(http, base_url, cat_png, case):
    build, status, code = CASES[case]
    response = http.post(f"{base_url}/predict", timeout=60, **build(cat_png))
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and "Traceback" not in response.text and 'File "' not in response.text
    assert_serving_normally(http, base_url, cat_png)


# Headers that both of POST /predict's paths must answer alike (Serve adds its own, e.g. x-request-id).
_CONTRACT_HEADERS = ("content-type", "content-length", "x-error-code", "retry-after")


def _answer(response) -> tuple:
    body = response.json()
    headers = {name: response.headers.get(name) for name in _CONTRACT_HEADERS}
    if response.status_code == 200:
        # Two forwards of the same image may differ in the last bits (a batch of 1 or 2): scores
        # compared to 1e-5, and so not the body's length.
        for result in body if isinstance(body, list) else [body]:
            for p in result["predictions"]:
                p["score"] = round(p["score"], 5)
        headers.pop("content-length")
    return response.status_code, body, headers


@pytest.mark.parametrize("case", [*CASES, "ok", "ok-top-k", "ok-several"])
def test_the_hot_route_answers_as_fastapi_does(http, base_url, cat_png, case):
    """POST /predict with no query string or one plain top_k is answered before FastAPI's routing
    (ingress.IngressApp); an unknown query parameter, which FastAPI ignores, sends the same request
    through FastAPI's declared route. Both answer alike: status, body, contract headers."""
    if case == "ok":
        kwargs = {"files": {"file": ("c.png", cat_png)}}
    elif case == "ok-top-k":
        kwargs = {"files": {"file": ("c.png", cat_png)}, "params": {"top_k": 3}}
    elif case == "ok-several":
        kwargs = {"json": {"images": [b64(cat_png)] * 2, "top_k": 2}}
    else:
        kwargs = CASES[case][0](cat_png)
    hot = http.post(f"{base_url}/predict", timeout=60, **kwargs)
    routed = http.post(
        f"{base_url}/predict",
        timeout=60,
        **{**kwargs, "params": {**kwargs.get("params", {}), "via": "fastapi"}},
    )
    assert _answer(hot) == _answer(routed)
    assert hot.status_code == (200 if case.startswith("ok") else CASES[case][1]), hot.text


def test_one_bad_image_among_good_ones_fails_the_request_only(http, base_url, cat_png):
    files = [("file", ("a.png", cat_png)), ("file", ("b.png", b"junk")), ("file", ("c.png", cat_png))]
    response = http.post(f"{base_url}/predict", files=files)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"
    assert_serving_normally(http, base_url, cat_png)


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("get", "/nope", 404, "not_found"),
        ("get", "/predict", 405, "method_not_allowed"),
        ("get", "/v2/models/resnet50", 404, "not_found"),
        ("post", "/v2/models/resnet50/infer", 404, "not_found"),
        ("get", "/v2/models/mobilenet_v2/versions/V9", 404, "not_found"),
    ],
)
def test_routing_errors_are_json(http, base_url, method, path, status, code):
    response = getattr(http, method)(f"{base_url}{path}", json={})
    assert response.status_code == status
    assert response.headers["X-Error-Code"] == code
    if path.startswith("/v2"):  # the Open Inference Protocol's error object: {"error": "<message>"}
        assert isinstance(response.json()["error"], str) and response.json()["error"]
    else:
        assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "body, headers, status",
    [
        (b"{oops", {}, 400),
        (
            json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["@@"]}]}),
            {},
            400,
        ),
        (
            json.dumps(
                {"inputs": [{"name": "input", "shape": [1, 3, 5, 5], "datatype": "FP32", "data": [0.0] * 75}]}
            ),
            {},
            422,
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(b"junk")]}]}
            ),
            {},
            400,
        ),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400),
    ],
    ids=["json-syntax", "base64", "shape", "corrupt-image", "binary-header"],
)
def test_bad_v2_requests(http, base_url, cat_png, body, headers, status):
    response = http.post(f"{base_url}/v2/models/mobilenet_v2/infer", data=body, headers=headers)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and message and not message.startswith("{"), message
    assert response.headers["X-Error-Code"]
    assert_serving_normally(http, base_url, cat_png)
