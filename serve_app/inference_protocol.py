"""Open Inference Protocol v2 (KServe / Triton REST): schemas and the binary tensor data extension.

Pure functions: ``parse_infer_request`` turns an HTTP body (JSON, or JSON header + binary tail as
announced by ``Inference-Header-Content-Length``) into typed inputs, ``encode_infer_response``
builds the response body and headers for the requested outputs (JSON or binary, with the
classification extension).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.errors import BadRequest, InvalidParameter, NotFound, TooManyImages
from serve_app.payload import decode_base64, first_error, load_json
from serve_app.predictions import top_indices

BINARY_HEADER = "Inference-Header-Content-Length"
PROBABILITIES = "probabilities"
IMAGE_INPUT = "image"
TENSOR_INPUT = "input"


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "pytorch_torchvision"


def server_metadata(name: str, version: str) -> dict:
    return {"name": name, "version": version, "extensions": EXTENSIONS}


def model_metadata(name: str, version: str, crop_size: int, num_classes: int) -> dict:
    """The one model's metadata: BYTES images or an FP32 tensor in, FP32 class probabilities out."""
    return {
        "name": name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, 3, crop_size, crop_size]},
        ],
        "outputs": [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, num_classes]}],
    }


def check_model(requested: str, requested_version: str | None, name: str, version: str) -> None:
    """404 unless the request names this server's model (and, if given, its version)."""
    if requested != name:
        raise NotFound(f"unknown model {requested!r}; this server has {name!r}")
    if requested_version is not None and requested_version != version:
        raise NotFound(f"unknown version {requested_version!r} of {requested}; have {version!r}")


@dataclass(frozen=True)
class ImagesInput:
    """The BYTES input ``image``: encoded image files."""

    images: list[bytes]


@dataclass(frozen=True)
class TensorInput:
    """The FP32 input ``input``: an already-normalised ``[N, 3, crop, crop]`` tensor."""

    tensor: np.ndarray


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """Split the body into the JSON header and the binary tail, and validate the header."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise BadRequest(f"{BINARY_HEADER} must be an integer, got {header_length!r}") from None
        if not 0 < split <= len(body):
            raise BadRequest(f"{BINARY_HEADER} {split} is outside the body of {len(body)} bytes")
        head, tail = body[:split], body[split:]
    else:
        head, tail = body, b""
    document = load_json(head, "inference request")
    try:
        return InferenceRequest.model_validate(document), tail
    except ValidationError as exc:
        raise InvalidParameter(f"invalid inference request: {first_error(exc.errors())}") from None


def read_input(
    request: InferenceRequest, tail: bytes, crop_size: int, max_items: int
) -> ImagesInput | TensorInput:
    """Decode the single input tensor: BYTES of encoded images, or FP32 ``[N, 3, crop, crop]``."""
    if len(request.inputs) != 1:
        raise InvalidParameter(f"expected exactly one input, got {len(request.inputs)}")
    tensor = request.inputs[0]
    count = int(np.prod(tensor.shape)) if tensor.shape else 0
    binary_size = tensor.parameters.get("binary_data_size")
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size < 0 or binary_size > len(tail):
            raise BadRequest(f"binary_data_size {binary_size!r} does not fit the {len(tail)}-byte tail")
        raw = tail[:binary_size]
    elif tensor.data is None:
        raise InvalidParameter(f"input {tensor.name!r} has neither data nor binary_data_size")
    if tensor.datatype == "BYTES":
        if tensor.name != IMAGE_INPUT:
            raise InvalidParameter(f"BYTES input must be named {IMAGE_INPUT!r}, got {tensor.name!r}")
        if count > max_items:
            raise_too_many(count, max_items)
        images = _split_bytes(raw) if binary_size is not None else _base64_elements(tensor.data)
        if len(images) != count:
            raise InvalidParameter(f"shape {tensor.shape} announces {count} images, got {len(images)}")
        return ImagesInput(images)
    if tensor.datatype == "FP32":
        if tensor.name != TENSOR_INPUT:
            raise InvalidParameter(f"FP32 input must be named {TENSOR_INPUT!r}, got {tensor.name!r}")
        expected = [3, crop_size, crop_size]
        if len(tensor.shape) != 4 or tensor.shape[1:] != expected or tensor.shape[0] < 1:
            raise InvalidParameter(f"FP32 input shape must be [N, {', '.join(map(str, expected))}]")
        if tensor.shape[0] > max_items:
            raise_too_many(tensor.shape[0], max_items)
        if binary_size is not None:
            if binary_size != count * 4:
                raise BadRequest(f"FP32 tensor of shape {tensor.shape} needs {count * 4} bytes")
            array = np.frombuffer(raw, dtype="<f4")
        else:
            try:
                array = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
            except (ValueError, TypeError):
                raise InvalidParameter("FP32 data must be a (nested) list of numbers") from None
            if array.size != count:
                raise InvalidParameter(f"shape {tensor.shape} needs {count} values, got {array.size}")
        return TensorInput(array.reshape(tensor.shape))
    raise InvalidParameter(f"unsupported datatype {tensor.datatype!r}; use BYTES (images) or FP32")


def raise_too_many(count: int, limit: int) -> None:
    raise TooManyImages(f"{count} images in one request; the limit is {limit}")


def _split_bytes(raw: bytes) -> list[bytes]:
    """Triton's serialised BYTES: each element is a 4-byte little-endian length then the bytes."""
    items, offset, view = [], 0, memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest("binary BYTES tensor ends inside an element length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest("binary BYTES tensor element runs past the end of the data")
        items.append(view[offset : offset + size].tobytes())
        offset += size
    return items


def _base64_elements(data: Any) -> list[bytes]:
    flat: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidParameter(f"BYTES element {i} must be a base64 string")
    return [decode_base64(item, f"BYTES element {i}") for i, item in enumerate(flat)]


def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def encode_infer_response(
    request: InferenceRequest,
    probabilities: np.ndarray,
    labels: list[str] | tuple[str, ...],
    model_name: str,
    model_version: str,
) -> tuple[bytes, dict[str, str]]:
    """Build the response body and headers; binary outputs go after the JSON header."""
    binary_default = bool(request.parameters.get("binary_data_output", False))
    requested = request.outputs or [RequestOutput(name=PROBABILITIES)]
    outputs, tail = [], []
    for out in requested:
        if out.name != PROBABILITIES:
            raise InvalidParameter(f"unknown output {out.name!r}; this model has {PROBABILITIES!r}")
        k = out.parameters.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= probabilities.shape[1]:
            raise InvalidParameter(f"classification must be an integer in 0..{probabilities.shape[1]}")
        binary = bool(out.parameters.get("binary_data", binary_default))
        n = probabilities.shape[0]
        if k:
            strings = [
                f"{probabilities[r, c]:f}:{c}:{labels[c]}"
                for r in range(n)
                for c in top_indices(probabilities[r], k)
            ]
            entry: dict[str, Any] = {"name": out.name, "datatype": "BYTES", "shape": [n, k]}
            if binary:
                blob = serialize_bytes([s.encode() for s in strings])
                entry["parameters"] = {"binary_data_size": len(blob)}
                tail.append(blob)
            else:
                entry["data"] = strings
        else:
            entry = {"name": out.name, "datatype": "FP32", "shape": list(probabilities.shape)}
            if binary:
                blob = probabilities.astype("<f4", copy=False).tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                tail.append(blob)
            else:
                entry["data"] = probabilities.reshape(-1).tolist()
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": outputs,
    }
    if request.id is not None:
        document["id"] = request.id
    head = json.dumps(document).encode()
    if not tail:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(tail), {
        "Content-Type": "application/octet-stream",
        BINARY_HEADER: str(len(head)),
    }
