"""The HTTP ingress and preprocessing deployment: FastAPI routes, validation, decode, fan-out.

Every image of a request is decoded in a thread pool (PIL releases the GIL). Decoded images from
concurrent requests are grouped (``@serve.batch`` here too, a short wait) into one model call each,
so one Ray call carries several images; the model batches those groups across ingress replicas.
"""

# No `from __future__ import annotations`: FastAPI must see real types on the Serve-wrapped methods.
import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app import __version__, inference_protocol as oip
from serve_app.errors import (
    InvalidParameter,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    error_response,
)
from serve_app.imaging import SUPPORTED_FORMATS, decode_image
from serve_app.metrics import ingress_metrics
from serve_app.predictions import MAX_TOP_K, ImageResult, ServiceInfo, top_k
from serve_app.request_parsing import ACCEPTED_CONTENT_TYPES, parse_predict_body
from serve_app.settings import AppSettings, IngressTuning
from serve_app.weights import describe

log = logging.getLogger("ray.serve")

SERVICE_NAME = "image-classifier"
READY_TIMEOUT_S = 2.0
# The grouping decorator starts from IngressTuning's defaults; reconfigure applies the deployed user_config.
_DEFAULT_TUNING = IngressTuning()

app = FastAPI(
    title="Image classifier",
    version=__version__,
    description="Ray Serve image classification: a REST API and the Open Inference Protocol v2.",
)

def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def _reject(request: Request, status: int, code: str, message: str, headers=None) -> JSONResponse:
    ingress_metrics().rejected.inc(tags={"route": _route_of(request), "status": str(status), "code": code})
    return error_response(status, code, message, headers)


@app.exception_handler(ServiceError)
async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return _reject(request, exc.status, exc.code, exc.message, exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "request"
    return _reject(request, 422, InvalidParameter.code, f"{where}: {err.get('msg')}")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _reject(request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return _reject(request, 500, "internal_error", "internal error; see the replica's log")


_PREDICT_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "One or more images: multipart files, a raw image body, or base64 JSON.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
                    },
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "byte"},
                        "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
                    },
                }
            },
        },
    }
}
_ERRORS_DOC = {
    status: {"description": description}
    for status, description in {
        400: "Corrupt image, malformed JSON/base64/multipart.",
        413: "Body, image count or pixel count over the limit.",
        415: f"Content-Type is not one of: {ACCEPTED_CONTENT_TYPES}.",
        422: "Invalid parameter.",
        503: "Overloaded (Retry-After) or model not ready.",
    }.items()
}


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing it as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(
    name="ImageIngress",
    max_ongoing_requests=128,
    max_queued_requests=512,
    ray_actor_options={"num_cpus": 0.5},
)
@serve.ingress(app)
class ImageIngress:
    def __init__(self, model: DeploymentHandle, settings: AppSettings):
        self._metrics = ingress_metrics()
        self._model = model
        self._settings = settings
        self._limits = settings.limits
        self._weights = describe(settings.model_name, settings.weights, settings.weights_sha256)
        self._labels = self._weights.categories
        self._tuning = IngressTuning()
        self._decode_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="decode")
        self._model_tags = {"model": settings.model_name}

    def reconfigure(self, user_config: dict) -> None:
        self._tuning = IngressTuning.model_validate(user_config or {})
        logging.getLogger("ray.serve").setLevel(self._tuning.log_level)
        self._model_call.set_max_batch_size(self._tuning.max_images_per_model_call)
        self._model_call.set_batch_wait_timeout_s(self._tuning.model_call_wait_s)

    # ---- service endpoints -------------------------------------------------------------------

    @app.get("/", response_model=ServiceInfo, summary="Service and model information")
    async def service_info(self) -> dict:
        crop = self._weights.preprocessing.crop_size
        return {
            "service": SERVICE_NAME,
            "version": __version__,
            "model": self._settings.model_name,
            "model_version": self._weights.version,
            "num_classes": len(self._labels),
            "input_size": [3, crop, crop],
            "resize_size": self._weights.preprocessing.resize_size,
            "default_top_k": self._tuning.default_top_k,
            "max_top_k": MAX_TOP_K,
            "max_body_bytes": self._limits.max_body_bytes,
            "max_images_per_request": self._limits.max_images_per_request,
            "max_image_pixels": self._limits.max_image_pixels,
            "image_formats": sorted(SUPPORTED_FORMATS),
        }

    @app.get("/health", summary="Liveness: the ingress process answers")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model is loaded, warmed up and answering")
    async def ready(self) -> dict:
        await self._require_model_ready()
        return {"status": "ready"}

    async def _require_model_ready(self) -> dict:
        try:
            return await asyncio.wait_for(self._model.info.remote(), READY_TIMEOUT_S)
        except (asyncio.TimeoutError, BackPressureError, RayActorError) as exc:  # noqa: UP041 - not builtin TimeoutError on 3.10
            raise NotReady(f"model is not ready: {type(exc).__name__}") from None

    # ---- REST prediction ---------------------------------------------------------------------

    @app.post(
        "/predict",
        response_model=ImageResult | list[ImageResult],
        responses=_ERRORS_DOC,
        openapi_extra=_PREDICT_BODY_DOC,
        summary="Classify one or more images",
    )
    async def predict(
        self,
        request: Request,
        top_k_query: Annotated[int | None, Query(alias="top_k", ge=1, le=MAX_TOP_K)] = None,
    ) -> Response:
        body = await read_body(request, self._limits.max_body_bytes)
        self._metrics.request_bytes.observe(len(body), tags={"route": "/predict"})
        parsed = parse_predict_body(
            request.headers.get("content-type"), body, self._limits.max_images_per_request
        )
        k = parsed.top_k or top_k_query or self._tuning.default_top_k
        probabilities = await self._classify_images(parsed.images)
        results = [
            {
                "model": self._settings.model_name,
                "model_version": self._weights.version,
                "predictions": top_k(p, k, self._labels),
            }
            for p in probabilities
        ]
        return JSONResponse(results if parsed.plural else results[0])

    async def _classify_images(self, images: list[bytes]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        try:
            arrays = await asyncio.gather(
                *(loop.run_in_executor(self._decode_pool, self._decode, data) for data in images)
            )
        except ServiceError as exc:
            self._metrics.images.inc(len(images), tags={**self._model_tags, "outcome": exc.code})
            raise
        with self._model_errors(len(images)):
            return await asyncio.gather(*(self._model_call(a) for a in arrays))

    @contextlib.contextmanager
    def _model_errors(self, count: int):
        """Count the images' outcome and map model-side failures to a retryable 503."""
        try:
            yield
        except BackPressureError:
            self._metrics.images.inc(count, tags={**self._model_tags, "outcome": "overloaded"})
            raise Overloaded("the model queue is full; retry shortly") from None
        except RayActorError:
            self._metrics.images.inc(count, tags={**self._model_tags, "outcome": "replica_failed"})
            raise Overloaded("a model replica failed during the request; retry") from None
        self._metrics.images.inc(count, tags={**self._model_tags, "outcome": "ok"})

    # Many model calls may be in flight (one per group); the wait only collects images that arrive
    # together, so a lone request pays at most ``model_call_wait_s``.
    @serve.batch(max_batch_size=_DEFAULT_TUNING.max_images_per_model_call,
                 batch_wait_timeout_s=_DEFAULT_TUNING.model_call_wait_s, max_concurrent_batches=256)
    async def _model_call(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return list(await self._model.classify.remote(np.stack(arrays)))

    async def _classify_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """Already-normalised FP32 input, sent in groups of at most ``max_images_per_model_call``."""
        step = self._tuning.max_images_per_model_call
        with self._model_errors(len(tensor)):
            parts = await asyncio.gather(*(
                self._model.classify_normalized.remote(tensor[i : i + step])
                for i in range(0, len(tensor), step)
            ))
        return np.concatenate(parts)

    def _decode(self, data: bytes) -> np.ndarray:
        started = time.perf_counter()
        array = decode_image(data, self._weights.preprocessing, self._limits.max_image_pixels)
        self._metrics.decode_seconds.observe(time.perf_counter() - started, tags=self._model_tags)
        return array

    # ---- Open Inference Protocol v2 ----------------------------------------------------------

    def _check_model(self, model_name: str, version: str | None = None) -> None:
        if model_name != self._settings.model_name:
            raise NotFound(f"unknown model {model_name!r}; this server has {self._settings.model_name!r}")
        if version is not None and version != self._weights.version:
            raise NotFound(f"unknown version {version!r} of {model_name}; have {self._weights.version!r}")

    @app.get("/v2", response_model=oip.ServerMetadata, summary="OIP v2 server metadata")
    async def v2_server_metadata(self) -> dict:
        return {
            "name": SERVICE_NAME,
            "version": __version__,
            "extensions": ["binary_tensor_data", "classification"],
        }

    @app.get("/v2/health/live", summary="OIP v2 liveness")
    async def v2_live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="OIP v2 readiness")
    async def v2_ready(self) -> dict:
        await self._require_model_ready()
        return {"ready": True}

    @app.get("/v2/models/{model_name}", response_model=oip.ModelMetadata)
    @app.get("/v2/models/{model_name}/versions/{version}", response_model=oip.ModelMetadata)
    async def v2_model_metadata(self, model_name: str, version: str | None = None) -> dict:
        self._check_model(model_name, version)
        crop = self._weights.preprocessing.crop_size
        return {
            "name": model_name,
            "versions": [self._weights.version],
            "platform": "pytorch_torchvision",
            "inputs": [
                {"name": oip.IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                {"name": oip.TENSOR_INPUT, "datatype": "FP32", "shape": [-1, 3, crop, crop]},
            ],
            "outputs": [
                {"name": oip.PROBABILITIES, "datatype": "FP32", "shape": [-1, len(self._labels)]}
            ],
        }

    @app.get("/v2/models/{model_name}/ready")
    @app.get("/v2/models/{model_name}/versions/{version}/ready")
    async def v2_model_ready(self, model_name: str, version: str | None = None) -> dict:
        self._check_model(model_name, version)
        await self._require_model_ready()
        return {"name": model_name, "ready": True}

    @app.post("/v2/models/{model_name}/infer", responses=_ERRORS_DOC)
    @app.post("/v2/models/{model_name}/versions/{version}/infer", responses=_ERRORS_DOC)
    async def v2_infer(self, model_name: str, request: Request, version: str | None = None) -> Response:
        self._check_model(model_name, version)
        body = await read_body(request, self._limits.max_body_bytes)
        self._metrics.request_bytes.observe(len(body), tags={"route": "/v2/models/{model_name}/infer"})
        infer_request, tail = oip.parse_infer_request(body, request.headers.get(oip.BINARY_HEADER))
        parsed = oip.read_input(
            infer_request, tail, self._weights.preprocessing.crop_size,
            self._limits.max_images_per_request,
        )
        if parsed.images is not None:
            probabilities = np.stack(await self._classify_images(parsed.images))
        else:
            probabilities = await self._classify_tensor(parsed.tensor)
        content, headers = oip.encode_infer_response(
            infer_request, probabilities, self._labels, model_name, self._weights.version
        )
        return Response(content, headers=headers)
