"""Which requests ``IngressApp`` hands to the replica's hot ``POST /predict`` handler, and which go
through FastAPI (the answers of both paths are compared on a real Serve app in
tests/serving/test_serving_errors.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import Query

from serve_app import ingress
from serve_app.predictions import MAX_TOP_K


@pytest.mark.parametrize(
    "query, expected",
    [
        (b"", None),
        (b"top_k=3", 3),
        (b"top_k=03", 3),
        (f"top_k={MAX_TOP_K}".encode(), MAX_TOP_K),
        (b"top_k=0", False),
        (f"top_k={MAX_TOP_K + 1}".encode(), False),
        (b"top_k=many", False),
        (b"top_k=-1", False),
        (b"top_k=", False),
        (b"top_k=3&top_k=4", False),
        (b"top_k=3&debug=1", False),
        (b"debug=1", False),
    ],
)
def test_only_no_query_or_one_plain_top_k_in_range_takes_the_hot_route(query, expected):
    result = ingress._plain_top_k(query)
    assert (result, type(result)) == (expected, type(expected))


def _app() -> ingress.IngressApp:
    app = ingress.IngressApp()

    @app.post(ingress.PREDICT_PATH)
    async def predict(top_k: int | None = Query(None, ge=1, le=MAX_TOP_K)) -> dict:
        return {"via": "fastapi", "top_k": top_k}

    @app.post("/other")
    async def other() -> dict:
        return {"via": "fastapi-other"}

    return app


async def _hot(scope, receive, send, top_k) -> None:
    message = await receive()  # the handler reads the body itself
    body = json.dumps({"via": "hot", "top_k": top_k, "body": message["body"].decode()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _call(app, method: str, path: str, query: bytes = b"", root_path: str = "") -> tuple[int, dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"img", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "root_path": root_path,
        "query_string": query,
        "headers": [(b"content-type", b"image/png")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_the_hot_handler_takes_plain_predict_posts_and_fastapi_the_rest(monkeypatch):
    app = _app()
    monkeypatch.setattr(ingress, "_hot_predict", _hot)
    assert _call(app, "POST", "/predict") == (200, {"via": "hot", "top_k": None, "body": "img"})
    assert _call(app, "POST", "/predict", b"top_k=7") == (200, {"via": "hot", "top_k": 7, "body": "img"})
    # Under a mount point (Serve's route_prefix), routed on the path below it, as Starlette does.
    assert _call(app, "POST", "/predict", root_path="/api")[1]["via"] == "hot"
    # Anything else is FastAPI's: its validation, its 405, its other routes.
    status, body = _call(app, "POST", "/predict", b"top_k=0")
    assert status == 422 and "top_k" in json.dumps(body)
    assert _call(app, "POST", "/predict", b"top_k=7&x=1") == (200, {"via": "fastapi", "top_k": 7})
    assert _call(app, "GET", "/predict")[0] == 405
    assert _call(app, "POST", "/other") == (200, {"via": "fastapi-other"})
    assert _call(app, "POST", "/predictions")[0] == 404


def test_the_served_app_as_serve_transformed_it_hands_predict_to_the_handler(monkeypatch):
    # ingress.app is the app Serve deploys: its class-based routes already moved by @serve.ingress.
    monkeypatch.setattr(ingress, "_hot_predict", _hot)
    assert isinstance(ingress.app, ingress.IngressApp)
    assert _call(ingress.app, "POST", "/predict", b"top_k=2") == (
        200,
        {"via": "hot", "top_k": 2, "body": "img"},
    )


def test_without_a_registered_handler_fastapi_answers_everything(monkeypatch):
    monkeypatch.setattr(ingress, "_hot_predict", None)
    assert _call(_app(), "POST", "/predict", b"top_k=7") == (200, {"via": "fastapi", "top_k": 7})
