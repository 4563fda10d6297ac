"""The chores the REST and OIP parsers share, each in one place: a JSON body, a base64 item and the
first error of a pydantic validation, turned into the service's errors (pure: no web stack)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from serve_app.errors import BadRequest


def load_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None


def decode_base64(item: str, what: str) -> bytes:
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


def first_error(errors: list[dict], where: str = "body") -> str:
    """``loc: msg`` of the first of pydantic's (or FastAPI's) validation errors."""
    err = errors[0]
    return f"{'.'.join(str(p) for p in err.get('loc', ())) or where}: {err.get('msg')}"
