"""Open Inference Protocol v2 through the real tritonclient[http] client, binary and JSON, and through
KServe's own Python client (its own venv, .tools/kserve-client: scripts/tools/kserve-client.sh)."""

from __future__ import annotations

import base64
import json
import subprocess

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from harness.images import CAT_LABELS
from harness.ray_cluster import REPO, load_serve_config
from serve_app.imaging import decode_image
from serve_app.settings import AppSettings
from serve_app.torch_model import TorchModel

MODEL = "mobilenet_v2"
KSERVE_PYTHON = REPO / ".tools" / "kserve-client" / "bin" / "python"
# Run by KServe's client venv: infer the image read from stdin, then a body with invalid base64; print
# what the client returns and what its exception says.
KSERVE_CALLS = """
import asyncio, base64, json, sys
import httpx
from kserve import InferenceRESTClient, RESTConfig

async def main():
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    def body(item):
        return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [item]}],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]}
    ok = await client.infer(sys.argv[1], body(base64.b64encode(sys.stdin.buffer.read()).decode()),
                            model_name=sys.argv[2])
    try:
        await client.infer(sys.argv[1], body("@@"), model_name=sys.argv[2])
        error = None
    except httpx.HTTPStatusError as exc:
        error = {"status": exc.response.status_code, "message": str(exc)}
    print(json.dumps({"top": ok.outputs[0].data[0], "error": error}))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def client(base_url):
    with triton.InferenceServerClient(base_url.removeprefix("http://")) as c:
        yield c


@pytest.fixture(scope="module")
def local_model():
    """The same model, built from the same Serve config args, called directly (no Ray)."""
    args = load_serve_config()["applications"][0]["args"]
    return TorchModel(AppSettings(**args))


def image_input(images: list[bytes], binary: bool) -> triton.InferInput:
    """Binary: raw file bytes (length-prefixed by the client); JSON: base64 strings (JSON has no bytes)."""
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["IMAGENET1K_V1"]
    assert {(i["name"], i["datatype"]) for i in meta["inputs"]} == {("image", "BYTES"), ("input", "FP32")}
    assert meta["outputs"][0]["shape"] == [-1, 1000]
    server = client.get_server_metadata()
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_encoded_images(client, cat_png, coffee_png, binary):
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(MODEL, [image_input([cat_png, coffee_png], binary)], outputs=outputs)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (2, 1000) and probs.dtype == np.float32
    classes = client.infer(
        MODEL,
        [image_input([cat_png, coffee_png], binary)],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)],
    ).as_numpy("probabilities")
    assert classes.shape == (2, 3)

    def text(element) -> str:  # binary outputs come back as bytes, JSON ones as str
        return element.decode() if isinstance(element, bytes) else element

    cat_top = text(classes[0][0]).split(":")
    assert cat_top[2] in CAT_LABELS and int(cat_top[1]) == int(probs[0].argmax())
    assert text(classes[1][0]).split(":")[2] == "espresso"
    assert abs(float(cat_top[0]) - float(probs[0].max())) < 1e-5


def test_served_probabilities_equal_a_direct_model_call(client, local_model, cat_png, hopper_jpg):
    result = client.infer(MODEL, [image_input([cat_png, hopper_jpg], True)])
    served = result.as_numpy("probabilities")
    prep = local_model.weights.preprocessing
    direct = local_model.forward_uint8(
        np.stack([decode_image(d, prep, 40_000_000) for d in (cat_png, hopper_jpg)])
    )
    np.testing.assert_allclose(served, direct, atol=1e-4)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_normalised_fp32_tensor(client, local_model, coffee_png, binary):
    info = local_model.weights
    image = decode_image(coffee_png, info.preprocessing, 40_000_000)[None].astype(np.float32)
    mean = np.array(info.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(info.std, np.float32).reshape(1, 3, 1, 1)
    tensor = ((image.transpose(0, 3, 1, 2) / 255.0 - mean) / std).astype(np.float32)
    inp = triton.InferInput("input", list(tensor.shape), "FP32")
    inp.set_data_from_numpy(tensor, binary_data=binary)
    probs = client.infer(MODEL, [inp]).as_numpy("probabilities")
    assert info.categories[int(probs[0].argmax())] == "espresso"
    np.testing.assert_allclose(probs, local_model.forward_normalized(tensor), atol=1e-4)


def test_errors_reach_the_client_as_exceptions(client):
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [image_input([b"not an image"], True)])
    assert err.value.status() == "400"
    # The protocol's error object is {"error": "<message>"}: the client shows the message itself, not
    # a printed dict (the stable code travels in the X-Error-Code header).
    message = err.value.message()
    assert message and "code" not in message and not message.startswith("{"), message
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("resnet50")
    assert err.value.status() == "404"
    assert err.value.message() == "unknown model 'resnet50'; this server has 'mobilenet_v2'"
    assert not client.is_model_ready("resnet50")


def test_kserve_client_classifies_and_shows_the_protocol_error_message(base_url, cat_png):
    assert KSERVE_PYTHON.exists(), f"{KSERVE_PYTHON} missing: run scripts/tools/kserve-client.sh (make tools)"
    proc = subprocess.run(
        [str(KSERVE_PYTHON), "-c", KSERVE_CALLS, base_url, MODEL],
        input=cat_png,
        capture_output=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert result["top"].split(":", 2)[2] in CAT_LABELS, result
    # KServe's client puts the protocol's error string first in its exception's message.
    assert result["error"]["status"] == 400, result
    assert result["error"]["message"].startswith("BYTES element 0 is not valid base64, '400 Bad Request'"), (
        result
    )
