"""Parsing of ``POST /predict`` bodies: multipart files, a raw image body, or base64 JSON.

Pure functions over bytes already read under the body-size limit; the result is the list of encoded
images (in request order), an optional ``top_k`` from the body, and whether the client asked for
several images (which decides between a single result object and a list).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from serve_app.errors import BadRequest, InvalidParameter, TooManyImages, UnsupportedMediaType
from serve_app.payload import decode_base64, first_error, load_json
from serve_app.predictions import MAX_TOP_K

ACCEPTED_CONTENT_TYPES = "multipart/form-data, application/json, image/*, application/octet-stream"
FILE_FIELD = "file"


@dataclass(frozen=True)
class PredictInput:
    images: list[bytes]
    top_k: int | None
    # The client sent a list (``images``, or several files): answer with a list of results.
    answer_as_list: bool


class JsonPredictBody(BaseModel):
    """``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}``, optionally with ``top_k``."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    images: list[str] | None = None
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K)

    @model_validator(mode="after")
    def _exactly_one(self) -> JsonPredictBody:
        if (self.image is None) == (self.images is None):
            raise ValueError("give exactly one of 'image' or 'images'")
        if self.images is not None and not self.images:
            raise ValueError("'images' must not be empty")
        return self


def parse_predict_body(content_type: str | None, body: bytes, max_images: int) -> PredictInput:
    media_type, options = parse_options_header(content_type or "")
    media = media_type.decode("latin-1").lower()
    if media == "multipart/form-data":
        result = _parse_multipart(body, options.get(b"boundary"), max_images)
    elif media == "application/json" or media.endswith("+json"):
        result = _parse_json(body)
    elif media.startswith("image/") or media == "application/octet-stream":
        result = PredictInput(images=[body], top_k=None, answer_as_list=False)
    else:
        shown = media or "no Content-Type"
        raise UnsupportedMediaType(f"{shown} is not accepted; send one of {ACCEPTED_CONTENT_TYPES}")
    if len(result.images) > max_images:
        raise TooManyImages(f"{len(result.images)} images in one request; the limit is {max_images}")
    return result


def _parse_json(body: bytes) -> PredictInput:
    document = load_json(body, "request body")
    try:
        parsed = JsonPredictBody.model_validate(document)
    except ValidationError as exc:
        raise InvalidParameter(first_error(exc.errors())) from None
    encoded = [parsed.image] if parsed.image is not None else parsed.images
    images = [decode_base64(item, f"image {i}") for i, item in enumerate(encoded)]
    return PredictInput(images=images, top_k=parsed.top_k, answer_as_list=parsed.images is not None)


def _parse_multipart(body: bytes, boundary: bytes | None, max_images: int) -> PredictInput:
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary parameter")
    parts: list[tuple[dict[bytes, bytes], list[bytes]]] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}

    def on_part_begin() -> None:
        if len(parts) > max_images + 8:  # files plus a few form fields
            raise TooManyImages(f"more than {max_images} images in one request")
        parts.append(({}, []))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1][0][bytes(header["field"]).lower()] = bytes(header["value"])
        header["field"].clear()
        header["value"].clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].append(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    images, top_k = [], None
    for headers, chunks in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition"))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        data = b"".join(chunks)
        if name == FILE_FIELD:
            images.append(data)
        elif name == "top_k":
            top_k = parse_top_k(data.decode("utf-8", "replace"))
        else:
            raise InvalidParameter(f"unexpected form field {name!r}; send images as {FILE_FIELD!r}")
    if not images:
        raise InvalidParameter(f"no {FILE_FIELD!r} field in the multipart body")
    return PredictInput(images=images, top_k=top_k, answer_as_list=len(images) > 1)


def parse_top_k(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidParameter(f"top_k must be an integer, got {text!r}") from None
    if not 1 <= value <= MAX_TOP_K:
        raise InvalidParameter(f"top_k must be between 1 and {MAX_TOP_K}, got {value}")
    return value
