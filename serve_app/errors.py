"""The service's error hierarchy and its single mapping to HTTP responses."""

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

    def to_response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.headers)


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


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)
