"""Parsing of /predict bodies and of Open Inference Protocol requests (pure units)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests

from serve_app import inference_protocol as oip
from serve_app.errors import BadRequest, InvalidParameter, TooManyImages, UnsupportedMediaType
from serve_app.request_parsing import parse_predict_body


def multipart(files: list[bytes], **fields) -> tuple[str, bytes]:
    prepared = requests.Request(
        "POST",
        "http://x/",
        files=[("file", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)],
        data=fields,
    ).prepare()
    return prepared.headers["Content-Type"], prepared.body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_multipart_keeps_file_order_and_reads_top_k():
    ctype, body = multipart([b"one", b"two", b"three"], top_k="3")
    parsed = parse_predict_body(ctype, body, 64)
    assert parsed.images == [b"one", b"two", b"three"]
    assert parsed.top_k == 3 and parsed.answer_as_list


def test_single_multipart_file_answers_one_object():
    ctype, body = multipart([b"one"])
    parsed = parse_predict_body(ctype, body, 64)
    assert parsed.images == [b"one"] and not parsed.answer_as_list and parsed.top_k is None


@pytest.mark.parametrize("ctype", ["image/jpeg", "image/png", "application/octet-stream"])
def test_raw_body_is_one_image(ctype):
    parsed = parse_predict_body(ctype, b"raw-bytes", 64)
    assert parsed.images == [b"raw-bytes"] and not parsed.answer_as_list


def test_json_single_and_list():
    single = parse_predict_body("application/json", json.dumps({"image": b64(b"a")}).encode(), 64)
    assert single.images == [b"a"] and not single.answer_as_list
    many = parse_predict_body(
        "application/json", json.dumps({"images": [b64(b"a"), b64(b"b")], "top_k": 2}).encode(), 64
    )
    assert many.images == [b"a", b"b"] and many.answer_as_list and many.top_k == 2


@pytest.mark.parametrize(
    "body, error",
    [
        (b"{not json", BadRequest),
        (json.dumps({"image": "%%%notbase64"}).encode(), BadRequest),
        (json.dumps({"image": b64(b"a"), "images": [b64(b"b")]}).encode(), InvalidParameter),
        (json.dumps({}).encode(), InvalidParameter),
        (json.dumps({"images": []}).encode(), InvalidParameter),
        (json.dumps({"image": b64(b"a"), "top_k": 0}).encode(), InvalidParameter),
        (json.dumps({"image": b64(b"a"), "top_k": 1001}).encode(), InvalidParameter),
        (json.dumps({"image": b64(b"a"), "colour": "red"}).encode(), InvalidParameter),
    ],
    ids=["syntax", "base64", "both", "neither", "empty-list", "top_k-0", "top_k-1001", "unknown-field"],
)
def test_bad_json_bodies(body, error):
    with pytest.raises(error):
        parse_predict_body("application/json", body, 64)


def test_too_many_images_in_any_form():
    with pytest.raises(TooManyImages):
        parse_predict_body("application/json", json.dumps({"images": [b64(b"a")] * 5}).encode(), 4)
    ctype, body = multipart([b"x"] * 5)
    with pytest.raises(TooManyImages):
        parse_predict_body(ctype, body, 4)


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_unsupported_content_types(ctype):
    with pytest.raises(UnsupportedMediaType, match="multipart/form-data"):
        parse_predict_body(ctype, b"x", 64)


def test_malformed_multipart():
    with pytest.raises(BadRequest):
        parse_predict_body("multipart/form-data", b"x", 64)  # no boundary
    with pytest.raises((BadRequest, InvalidParameter)):
        parse_predict_body("multipart/form-data; boundary=abc", b"--abc\r\ngarbage", 64)


def test_multipart_without_file_field():
    prepared = requests.Request("POST", "http://x/", files={"other": ("a.png", b"a")}).prepare()
    with pytest.raises(InvalidParameter, match="unexpected form field 'other'"):
        parse_predict_body(prepared.headers["Content-Type"], prepared.body, 64)


# ---- Open Inference Protocol -----------------------------------------------------------------


def infer_body(inputs, outputs=None, binary: bytes = b"", **params) -> tuple[bytes, str | None]:
    doc = {"inputs": inputs}
    if outputs is not None:
        doc["outputs"] = outputs
    if params:
        doc["parameters"] = params
    head = json.dumps(doc).encode()
    return head + binary, (str(len(head)) if binary else None)


def test_oip_json_bytes_input():
    body, hdr = infer_body(
        [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(b"a"), b64(b"b")]}]
    )
    request, tail = oip.parse_infer_request(body, hdr)
    assert oip.read_input(request, tail, 224, 64).images == [b"a", b"b"]


def test_oip_binary_bytes_input_is_length_prefixed():
    blob = oip.serialize_bytes([b"first", b"second!"])
    body, hdr = infer_body(
        [{"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}],
        binary=blob,
    )
    request, tail = oip.parse_infer_request(body, hdr)
    assert oip.read_input(request, tail, 224, 64).images == [b"first", b"second!"]


def test_oip_fp32_json_and_binary_agree():
    tensor = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    body, hdr = infer_body(
        [{"name": "input", "shape": [2, 3, 8, 8], "datatype": "FP32", "data": tensor.tolist()}]
    )
    request, tail = oip.parse_infer_request(body, hdr)
    from_json = oip.read_input(request, tail, 8, 64).tensor
    raw = tensor.tobytes()
    body, hdr = infer_body(
        [
            {
                "name": "input",
                "shape": [2, 3, 8, 8],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        binary=raw,
    )
    request, tail = oip.parse_infer_request(body, hdr)
    from_binary = oip.read_input(request, tail, 8, 64).tensor
    np.testing.assert_array_equal(from_json, tensor)
    np.testing.assert_array_equal(from_binary, tensor)


@pytest.mark.parametrize(
    "inputs, error",
    [
        (
            [{"name": "input", "shape": [1, 3, 9, 9], "datatype": "FP32", "data": [0.0] * 243}],
            InvalidParameter,
        ),
        ([{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 5}], InvalidParameter),
        ([{"name": "image", "shape": [1], "datatype": "INT64", "data": [1]}], InvalidParameter),
        ([{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["YQ=="]}], InvalidParameter),
        ([{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["@@@"]}], BadRequest),
        ([{"name": "image", "shape": [99], "datatype": "BYTES", "data": ["YQ=="] * 99}], TooManyImages),
        ([], InvalidParameter),
    ],
    ids=["wrong-shape", "short-data", "datatype", "count-mismatch", "base64", "too-many", "no-inputs"],
)
def test_oip_bad_inputs(inputs, error):
    body, hdr = infer_body(inputs)
    with pytest.raises(error):
        request, tail = oip.parse_infer_request(body, hdr)
        oip.read_input(request, tail, 8, 64)


@pytest.mark.parametrize("header", ["abc", "0", "999999"])
def test_oip_bad_binary_header(header):
    with pytest.raises(BadRequest):
        oip.parse_infer_request(b'{"inputs": []}', header)


def test_oip_response_binary_and_classification():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    request = oip.InferenceRequest.model_validate(
        {
            "id": "r1",
            "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": []}],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "probabilities", "parameters": {"classification": 2}},
            ],
        }
    )
    body, headers = oip.encode_infer_response(request, probs, ("a", "b", "c"), "m", "v1")
    split = int(headers[oip.BINARY_HEADER])
    doc = json.loads(body[:split])
    assert doc["id"] == "r1" and doc["model_version"] == "v1"
    binary_out, class_out = doc["outputs"]
    assert binary_out["parameters"]["binary_data_size"] == probs.nbytes
    np.testing.assert_array_equal(np.frombuffer(body[split:], "<f4").reshape(2, 3), probs)
    assert class_out["shape"] == [2, 2]
    assert class_out["data"] == ["0.700000:1:b", "0.200000:2:c", "0.500000:0:a", "0.250000:1:b"]


def test_oip_unknown_output_is_rejected():
    request = oip.InferenceRequest.model_validate(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}], "outputs": [{"name": "logits"}]}
    )
    with pytest.raises(InvalidParameter, match="logits"):
        oip.encode_infer_response(request, np.ones((1, 3), np.float32), ("a", "b", "c"), "m", "v")
