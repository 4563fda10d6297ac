"""One mapping of errors to HTTP (both shapes), the shared payload chores, and the one top-k."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve_app import inference_protocol as oip
from serve_app.errors import ERROR_CODE_HEADER, BadRequest, NotFound, code_for_status, error_response
from serve_app.payload import decode_base64, first_error, load_json
from serve_app.predictions import top_indices, top_k


def test_rest_errors_are_structured_and_oip_errors_are_the_protocols_string():
    rest = error_response(415, "unsupported_media_type", "text/plain is not accepted", {"Retry-After": "1"})
    assert json.loads(rest.body) == {
        "error": {"code": "unsupported_media_type", "message": "text/plain is not accepted"}
    }
    oip_error = error_response(404, "not_found", "unknown model 'x'", oip=True)
    assert json.loads(oip_error.body) == {"error": "unknown model 'x'"}
    for response, code in ((rest, "unsupported_media_type"), (oip_error, "not_found")):
        assert response.headers[ERROR_CODE_HEADER] == code
    assert rest.headers["Retry-After"] == "1" and rest.status_code == 415


def test_framework_statuses_have_stable_codes():
    assert [code_for_status(s) for s in (404, 405, 500, 418)] == [
        "not_found",
        "method_not_allowed",
        "internal_error",
        "http_error",
    ]


def test_payload_chores():
    assert load_json(b'{"a": 1}', "x") == {"a": 1}
    with pytest.raises(BadRequest, match="^request body is not valid JSON"):
        load_json(b"{oops", "request body")
    assert decode_base64("aGk=", "image 0") == b"hi"
    with pytest.raises(BadRequest, match="^image 3 is not valid base64$"):
        decode_base64("@@", "image 3")
    assert first_error([{"loc": ("inputs", 0, "shape"), "msg": "bad"}]) == "inputs.0.shape: bad"
    assert first_error([{"loc": (), "msg": "bad"}], "request") == "request: bad"


def test_top_indices_is_the_stable_full_sort_and_both_apis_use_it():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random(20).astype(np.float32)
        p[rng.integers(0, 20, 4)] = 0.5  # ties: the lower class id first
        for k in (1, 3, 20, 25):
            assert top_indices(p, k).tolist() == np.argsort(-p, kind="stable")[:k].tolist()
    labels = tuple(f"c{i}" for i in range(20))
    assert [r["class_id"] for r in top_k(p, 3, labels)] == top_indices(p, 3).tolist()
    request = oip.InferenceRequest.model_validate(
        {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
        }
    )
    body, _ = oip.encode_infer_response(request, p[None, :], labels, "m", "1")
    strings = json.loads(body)["outputs"][0]["data"]
    assert [int(s.split(":")[1]) for s in strings] == top_indices(p, 3).tolist()


def test_oip_metadata_and_model_check_live_with_the_protocol():
    meta = oip.model_metadata("mobilenet_v2", "IMAGENET1K_V1", 224, 1000)
    oip.ModelMetadata.model_validate(meta)
    assert meta["inputs"][1]["shape"] == [-1, 3, 224, 224] and meta["outputs"][0]["shape"] == [-1, 1000]
    oip.ServerMetadata.model_validate(oip.server_metadata("image-classifier", "0.1.0"))
    oip.check_model("mobilenet_v2", None, "mobilenet_v2", "IMAGENET1K_V1")
    with pytest.raises(NotFound, match="unknown model 'resnet50'"):
        oip.check_model("resnet50", None, "mobilenet_v2", "IMAGENET1K_V1")
    with pytest.raises(NotFound, match="unknown version 'V9'"):
        oip.check_model("mobilenet_v2", "V9", "mobilenet_v2", "IMAGENET1K_V1")
