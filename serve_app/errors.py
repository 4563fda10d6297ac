"""The service's error hierarchy and its single mapping to HTTP responses.

Every error response carries its stable code in the ``X-Error-Code`` header. The body is the REST
API's ``{"error": {"code", "message"}}``, or on the Open Inference Protocol's routes (``/v2``) the
protocol's own error object, ``{"error": "<message>"}``, which its clients (tritonclient, KServe's)
print as the message."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the pure modules (imaging, parsing) raise these without needing a web stack
    from fastapi.responses import JSONResponse


class ServiceError(Exception):
    """An error with a stable machine-readable code and an HTTP status."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class InvalidImage(BadRequest):
    code = "invalid_image"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class TooManyImages(PayloadTooLarge):
    code = "too_many_images"


class ImageTooLarge(PayloadTooLarge):
    code = "image_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class Overloaded(ServiceError):
    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReady(ServiceError):
    status, code = 503, "not_ready"

    def __init__(self, message: str):
        super().__init__(message, headers={"Retry-After": "5"})


# Codes of the errors the web framework raises itself (unknown route, wrong method, ...).
HTTP_STATUS_CODES = {404: NotFound.code, 405: "method_not_allowed", 500: ServiceError.code}
ERROR_CODE_HEADER = "X-Error-Code"


def code_for_status(status: int) -> str:
    return HTTP_STATUS_CODES.get(status, "http_error")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, *, oip: bool = False
) -> JSONResponse:
    from fastapi.responses import JSONResponse

    body = {"error": message} if oip else {"error": {"code": code, "message": message}}
    return JSONResponse(body, status, headers={**(headers or {}), ERROR_CODE_HEADER: code})
