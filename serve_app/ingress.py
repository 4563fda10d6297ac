"""The HTTP ingress deployment: FastAPI routes over the classification pipeline.

``ImageIngress`` only adapts HTTP: it reads the body under its size limit, parses it (request_parsing
for REST, inference_protocol for OIP v2), and hands the images to its ``ClassificationPipeline``
(pipeline.py: decode in a thread pool, group, model call, outcome), whose images from concurrent
requests are grouped here (``@serve.batch``, a short wait while model calls are out) into one model
call each, so one Ray call carries several images; the model batches those groups across ingress
replicas. ``POST /predict`` in its common forms skips FastAPI's routing (``IngressApp``). Errors become
responses in one place (errors.error_response).
"""

# No `from __future__ import annotations`: FastAPI must see real types on the Serve-wrapped methods.
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from serve_app import __version__, inference_protocol as oip
from serve_app.admission import Admission
from serve_app.errors import (
    InvalidParameter,
    PayloadTooLarge,
    ServiceError,
    code_for_status,
    error_response,
)
from serve_app.imaging import SUPPORTED_FORMATS
from serve_app.metrics import ingress_metrics
from serve_app.payload import first_error
from serve_app.pipeline import ClassificationPipeline
from serve_app.predictions import MAX_TOP_K, ImageResult, ServiceInfo, top_k
from serve_app.request_parsing import ACCEPTED_CONTENT_TYPES, FILE_FIELD, JsonPredictBody, parse_predict_body
from serve_app.settings import AppSettings, IngressTuning
from serve_app.weights import describe

log = logging.getLogger("ray.serve")

SERVICE_NAME = "image-classifier"
INTERNAL_ERROR = "internal error; see the replica's log"
READY_TIMEOUT_S = 2.0
# The grouping decorator starts from IngressTuning's defaults; reconfigure applies the deployed user_config.
_DEFAULT_TUNING = IngressTuning()

PREDICT_PATH = "/predict"
# The query strings the hot route takes itself: none, or one plain top_k (range-checked below).
_PLAIN_TOP_K = re.compile(rb"top_k=([0-9]{1,4})")

HotRoute = Callable[[Scope, Receive, Send, "int | None"], Awaitable[None]]
_hot_predict: HotRoute | None = None


def serve_hot_route(handler: HotRoute) -> None:
    """Let this process's ``IngressApp`` answer ``POST /predict`` with ``handler`` (the replica's own,
    registered from its constructor). A module-level function, not a class attribute: Serve pickles
    the deployment class by value, so a global set from its methods would not reach this module."""
    global _hot_predict
    _hot_predict = handler


def _route_path(scope: Scope) -> str:
    """The request's path below the app's mount point (``root_path``), as Starlette routes on it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


def _plain_top_k(query: bytes) -> int | None | bool:
    """The ``top_k`` of a query string the hot route takes (``None``: none given), or False for any
    other query string: that request goes through FastAPI, which validates and answers it as always."""
    if not query:
        return None
    match = _PLAIN_TOP_K.fullmatch(query)
    if match is None:
        return False
    value = int(match[1])
    return value if 1 <= value <= MAX_TOP_K else False


class IngressApp(FastAPI):
    """FastAPI, with ``POST /predict`` (the hot route) handed straight to the replica's handler,
    before FastAPI's middleware stack, routing and dependency solving: ~0.2-0.4 ms of CPU per image
    less, +2.5 % served at 32 clients on 2 cores (docs/PERFORMANCE.md 11.). The route stays declared, so the
    OpenAPI document is unchanged and every request the handler does not take (another route, any
    other query string) is answered by FastAPI with its own validation. The handler answers with the
    same code and the same error responses as the declared route (tests/serving run both)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = _hot_predict
        if (
            handler is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and _route_path(scope) == PREDICT_PATH
        ):
            top_k = _plain_top_k(scope.get("query_string", b""))
            if top_k is not False:
                scope["app"] = self
                await handler(scope, receive, send, top_k)
                return
        await super().__call__(scope, receive, send)


app = IngressApp(
    title="Image classifier",
    version=__version__,
    description="Ray Serve image classification: a REST API and the Open Inference Protocol v2.",
)


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def _reject(
    request: Request, status: int, code: str, message: str, headers=None, route: str | None = None
) -> JSONResponse:
    """The error response, counted by the route's template (``route``, else the one FastAPI matched)."""
    tags = {"route": route or _route_of(request), "status": str(status), "code": code}
    ingress_metrics().rejected.inc(tags=tags)
    # The Open Inference Protocol's routes answer in its error shape (errors.py).
    return error_response(status, code, message, headers, oip=request.url.path.startswith("/v2"))


@app.exception_handler(ServiceError)
async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return _reject(request, exc.status, exc.code, exc.message, exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _reject(
        request, InvalidParameter.status, InvalidParameter.code, first_error(exc.errors(), "request")
    )


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _reject(
        request,
        exc.status_code,
        code_for_status(exc.status_code),
        str(exc.detail),
        getattr(exc, "headers", None),
    )


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return _reject(request, 500, code_for_status(500), INTERNAL_ERROR)


# The request body of /predict, from the models that parse it: multipart (the file field and the JSON
# body's top_k), a raw image, or the JSON body itself.
_JSON_BODY_SCHEMA = JsonPredictBody.model_json_schema()
_PREDICT_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "One or more images: multipart files, a raw image body, or base64 JSON.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": _JSON_BODY_SCHEMA["properties"]["top_k"],
                    },
                    "required": [FILE_FIELD],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": _JSON_BODY_SCHEMA},
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


async def read_body(request: Request, limit: int, route: str | None = None) -> bytes:
    """Read the body, refusing it as soon as it is known to exceed ``limit`` bytes, and record its size
    (by ``route``, else the template FastAPI matched)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    ingress_metrics().request_bytes.observe(size, tags={"route": route or _route_of(request)})
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
        self._settings = settings
        self._limits = settings.limits
        self._weights = describe(settings.model_name, settings.weights, settings.weights_sha256)
        self._labels = self._weights.categories
        self._tuning = IngressTuning()
        self._pipeline = ClassificationPipeline(
            model,
            preprocessing=self._weights.preprocessing,
            max_image_pixels=self._limits.max_image_pixels,
            metrics=ingress_metrics(),
            model_name=settings.model_name,
            group=self._group_image,
            admission=Admission(
                self._tuning.max_expected_wait_s, on_window=ingress_metrics().observe_admission
            ),
        )
        serve_hot_route(self._predict_hot)

    def reconfigure(self, user_config: dict) -> None:
        self._tuning = IngressTuning.model_validate(user_config or {})
        logging.getLogger("ray.serve").setLevel(self._tuning.log_level)
        self._group.set_max_batch_size(self._tuning.max_images_per_model_call)
        # Saturated: enough images in flight to fill two model calls (one running, one forming).
        self._pipeline.admission.configure(
            self._tuning.max_expected_wait_s,
            2 * self._tuning.max_images_per_model_call,
            self._tuning.max_retry_after_s,
            self._tuning.latency_objective_s,
        )

    def check_health(self) -> None:
        # An idle replica closes no admission window by itself: close it here, so a limit lowered by
        # an overload is given back and the admission gauges stay exported (Ray drops a gauge ~30 s
        # after its last update).
        admission = self._pipeline.admission
        if not admission.tick():  # a closed window has reported itself through ``on_window``
            ingress_metrics().observe_admission(admission)

    async def _group_image(self, array: np.ndarray) -> np.ndarray:
        """One decoded image into ``_group``. It waits up to ``model_call_wait_s`` for others to share
        its model call only while calls of this replica are out at the model: the model is busy then,
        and a fuller call costs less per image in both replicas. With none out the call leaves at once,
        so a lone request does not wait for company (Serve reads the wait as a group starts)."""
        self._group.set_batch_wait_timeout_s(
            self._tuning.model_call_wait_s if self._pipeline.model_calls else 0.0
        )
        return await self._group(array)

    # Many model calls may be in flight (one per group).
    @serve.batch(
        max_batch_size=_DEFAULT_TUNING.max_images_per_model_call,
        batch_wait_timeout_s=_DEFAULT_TUNING.model_call_wait_s,
        max_concurrent_batches=256,
    )
    async def _group(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return await self._pipeline.call_model(arrays)

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
        await self._pipeline.require_ready(READY_TIMEOUT_S)
        return {"status": "ready"}

    # ---- REST prediction ---------------------------------------------------------------------

    @app.post(
        PREDICT_PATH,
        # Documented, not re-validated: the results are built from the model's output (JSONResponse).
        responses={200: {"model": ImageResult | list[ImageResult]}, **_ERRORS_DOC},
        openapi_extra=_PREDICT_BODY_DOC,
        summary="Classify one or more images",
    )
    async def predict(
        self,
        request: Request,
        top_k_query: Annotated[int | None, Query(alias="top_k", ge=1, le=MAX_TOP_K)] = None,
    ) -> Response:
        return await self._classify(request, top_k_query)

    async def _predict_hot(self, scope: Scope, receive: Receive, send: Send, top_k: int | None) -> None:
        """``POST /predict`` taken by ``IngressApp`` before FastAPI: the route's work, and its errors
        answered as FastAPI's exception handlers answer them."""
        request = Request(scope, receive)
        try:
            response = await self._classify(request, top_k)
        except ServiceError as exc:
            response = _reject(request, exc.status, exc.code, exc.message, exc.headers, PREDICT_PATH)
        except Exception:
            # As FastAPI's ServerErrorMiddleware: the 500 response, then the error raised for Serve.
            log.exception("unhandled error on %s", PREDICT_PATH)
            await _reject(request, 500, code_for_status(500), INTERNAL_ERROR, None, PREDICT_PATH)(
                scope, receive, send
            )
            raise
        await response(scope, receive, send)

    async def _classify(self, request: Request, top_k_query: int | None) -> Response:
        self._pipeline.refuse_if_overloaded()
        body = await read_body(request, self._limits.max_body_bytes, PREDICT_PATH)
        parsed = parse_predict_body(
            request.headers.get("content-type"), body, self._limits.max_images_per_request
        )
        k = parsed.top_k or top_k_query or self._tuning.default_top_k
        results = [
            {
                "model": self._settings.model_name,
                "model_version": self._weights.version,
                "predictions": top_k(p, k, self._labels),
            }
            for p in await self._pipeline.classify_images(parsed.images)
        ]
        return JSONResponse(results if parsed.answer_as_list else results[0])

    # ---- Open Inference Protocol v2 ----------------------------------------------------------

    @app.get("/v2", response_model=oip.ServerMetadata, summary="OIP v2 server metadata")
    async def v2_server_metadata(self) -> dict:
        return oip.server_metadata(SERVICE_NAME, __version__)

    @app.get("/v2/health/live", summary="OIP v2 liveness")
    async def v2_live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="OIP v2 readiness")
    async def v2_ready(self) -> dict:
        await self._pipeline.require_ready(READY_TIMEOUT_S)
        return {"ready": True}

    @app.get("/v2/models/{model_name}", response_model=oip.ModelMetadata)
    @app.get("/v2/models/{model_name}/versions/{version}", response_model=oip.ModelMetadata)
    async def v2_model_metadata(self, model_name: str, version: str | None = None) -> dict:
        oip.check_model(model_name, version, self._settings.model_name, self._weights.version)
        return oip.model_metadata(
            model_name, self._weights.version, self._weights.preprocessing.crop_size, len(self._labels)
        )

    @app.get("/v2/models/{model_name}/ready")
    @app.get("/v2/models/{model_name}/versions/{version}/ready")
    async def v2_model_ready(self, model_name: str, version: str | None = None) -> dict:
        oip.check_model(model_name, version, self._settings.model_name, self._weights.version)
        await self._pipeline.require_ready(READY_TIMEOUT_S)
        return {"name": model_name, "ready": True}

    @app.post("/v2/models/{model_name}/infer", responses=_ERRORS_DOC)
    @app.post("/v2/models/{model_name}/versions/{version}/infer", responses=_ERRORS_DOC)
    async def v2_infer(self, model_name: str, request: Request, version: str | None = None) -> Response:
        oip.check_model(model_name, version, self._settings.model_name, self._weights.version)
        self._pipeline.refuse_if_overloaded()
        body = await read_body(request, self._limits.max_body_bytes)
        infer_request, tail = oip.parse_infer_request(body, request.headers.get(oip.BINARY_HEADER))
        parsed = oip.read_input(
            infer_request,
            tail,
            self._weights.preprocessing.crop_size,
            self._limits.max_images_per_request,
        )
        if isinstance(parsed, oip.ImagesInput):
            probabilities = np.stack(await self._pipeline.classify_images(parsed.images))
        else:
            probabilities = await self._pipeline.classify_tensor(
                parsed.tensor, self._tuning.max_images_per_model_call
            )
        content, headers = oip.encode_infer_response(
            infer_request, probabilities, self._labels, model_name, self._weights.version
        )
        return Response(content, headers=headers)
