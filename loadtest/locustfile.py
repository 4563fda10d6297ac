"""Locust suite for the classifier API. Run it through ``python -m loadtest.run`` (its own process).

Weighted tasks over the API: multipart predict, raw-bytes predict, multi-image predict and OIP v2
infer (BYTES input, base64 JSON), drawing photos from ``loadtest.images``. Every answer is validated;
a non-2xx status or a malformed body counts as a failure. The load shape comes from environment
variables set by the wrapper (``LOADTEST_SHAPE``, ``LOADTEST_USERS``, ``LOADTEST_DURATION``, ...).
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
import uuid

from locust import FastHttpUser, LoadTestShape, between, constant, events, task

from loadtest.images import pool, weighted_pool
from loadtest.shapes import ShapeParams, tick

TOP_K = 5
MULTI_IMAGES = 4
MODEL = os.environ.get("LOADTEST_MODEL", "mobilenet_v2")
_WAIT = float(os.environ.get("LOADTEST_WAIT_S", "0"))

POOL = weighted_pool()
SMALL = [img for img in pool() if img.size[0] * img.size[1] <= 1_000_000]


class Malformed(Exception):
    pass


def check_result(result: object, expected_any: frozenset[str] = frozenset()) -> None:
    """One /predict result: model, version, top-k predictions sorted by score in [0, 1]."""
    if not isinstance(result, dict) or not result.get("model") or not result.get("model_version"):
        raise Malformed(f"result is not a prediction object: {str(result)[:200]}")
    preds = result.get("predictions")
    if not isinstance(preds, list) or len(preds) != TOP_K:
        raise Malformed(f"expected {TOP_K} predictions, got {str(preds)[:200]}")
    scores = [p.get("score") for p in preds]
    if not all(isinstance(s, float | int) and 0.0 <= s <= 1.0 for s in scores):
        raise Malformed(f"scores out of range: {scores}")
    if scores != sorted(scores, reverse=True):
        raise Malformed(f"predictions not sorted by score: {scores}")
    if not all(isinstance(p.get("label"), str) and isinstance(p.get("class_id"), int) for p in preds):
        raise Malformed("prediction without label/class_id")
    if expected_any and not expected_any & {p["label"] for p in preds}:
        raise Malformed(f"none of {sorted(expected_any)} in top {TOP_K}: {[p['label'] for p in preds]}")


def check_v2(doc: object, n: int, expected: list[frozenset[str]]) -> None:
    """OIP v2 answer with the classification extension: n×TOP_K "score:index:label" strings."""
    if not isinstance(doc, dict) or doc.get("model_name") != MODEL:
        raise Malformed(f"not an infer response for {MODEL}: {str(doc)[:200]}")
    outputs = doc.get("outputs") or []
    if len(outputs) != 1 or outputs[0].get("name") != "probabilities":
        raise Malformed(f"unexpected outputs: {str(outputs)[:200]}")
    out = outputs[0]
    data = out.get("data")
    if out.get("shape") != [n, TOP_K] or not isinstance(data, list) or len(data) != n * TOP_K:
        raise Malformed(f"expected shape [{n}, {TOP_K}], got {out.get('shape')}")
    for row in range(n):
        labels = set()
        for item in data[row * TOP_K : (row + 1) * TOP_K]:
            score, _, label = str(item).split(":", 2)
            if not 0.0 <= float(score) <= 1.0:
                raise Malformed(f"score out of range in {item!r}")
            labels.add(label)
        if expected[row] and not expected[row] & labels:
            raise Malformed(f"none of {sorted(expected[row])} in {sorted(labels)}")


def multipart(images, boundary: str) -> bytes:
    parts = []
    for i, img in enumerate(images):
        ext = "png" if img.content_type == "image/png" else "jpg"
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.{ext}"\r\n'
            f"Content-Type: {img.content_type}\r\n\r\n".encode()
            + img.data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


class ClassifierUser(FastHttpUser):
    wait_time = constant(0) if _WAIT <= 0 else between(_WAIT / 2, _WAIT * 1.5)
    # Phone photos are up to ~1 MB; the server's own timeout is 30 s.
    network_timeout = 30.0
    connection_timeout = 10.0

    def _post(self, name: str, path: str, body: bytes, headers: dict, validate) -> None:
        with self.client.post(path, data=body, headers=headers, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            try:
                validate(json.loads(resp.content))
            except (Malformed, ValueError, TypeError, KeyError, AttributeError) as exc:
                resp.failure(f"malformed answer: {exc}")
            else:
                resp.success()

    @task(3)
    def predict_multipart(self) -> None:
        img = random.choice(POOL)
        boundary = uuid.uuid4().hex
        self._post(
            "/predict multipart",
            f"/predict?top_k={TOP_K}",
            multipart([img], boundary),
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            lambda doc: check_result(doc, img.expected_any),
        )

    @task(4)
    def predict_raw(self) -> None:
        img = random.choice(POOL)
        self._post(
            "/predict raw",
            f"/predict?top_k={TOP_K}",
            img.data,
            {"Content-Type": img.content_type},
            lambda doc: check_result(doc, img.expected_any),
        )

    @task(1)
    def predict_multi(self) -> None:
        imgs = random.sample(SMALL, MULTI_IMAGES)
        boundary = uuid.uuid4().hex

        def validate(doc):
            if not isinstance(doc, list) or len(doc) != len(imgs):
                raise Malformed(f"expected a list of {len(imgs)} results")
            for result, img in zip(doc, imgs, strict=True):
                check_result(result, img.expected_any)

        self._post(
            f"/predict x{MULTI_IMAGES}",
            f"/predict?top_k={TOP_K}",
            multipart(imgs, boundary),
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            validate,
        )

    @task(2)
    def v2_infer(self) -> None:
        imgs = [random.choice(POOL)]
        body = json.dumps(
            {
                "id": uuid.uuid4().hex,
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [len(imgs)],
                        "data": [base64.b64encode(i.data).decode() for i in imgs],
                    }
                ],
                "outputs": [{"name": "probabilities", "parameters": {"classification": TOP_K}}],
            }
        ).encode()
        self._post(
            "/v2 infer",
            f"/v2/models/{MODEL}/infer",
            body,
            {"Content-Type": "application/json"},
            lambda doc: check_v2(doc, len(imgs), [i.expected_any for i in imgs]),
        )


def _params() -> ShapeParams:
    env = os.environ
    return ShapeParams(
        users=int(env.get("LOADTEST_USERS", "16")),
        duration_s=float(env.get("LOADTEST_DURATION", "60")),
        steps=int(env.get("LOADTEST_STEPS", "4")),
        spike_factor=int(env.get("LOADTEST_SPIKE_FACTOR", "10")),
    )


class SelectedShape(LoadTestShape):
    """The shape named by ``LOADTEST_SHAPE`` (steady, step or spike); see ``loadtest.shapes``."""

    shape = os.environ.get("LOADTEST_SHAPE", "steady")
    params = _params()

    def tick(self):
        return tick(self.shape, self.get_run_time(), self.params)


# Optional per-request samples (unix time, name, latency ms, ok) for time-windowed analysis, e.g.
# the p99 during a spike (bench/autoscale.py).
_samples_path = os.environ.get("LOADTEST_SAMPLES")
if _samples_path:
    _samples = open(_samples_path, "a", buffering=1 << 16)  # noqa: SIM115 - closed at quit

    @events.request.add_listener
    def _record(request_type, name, response_time, response_length, exception, **_kw):
        _samples.write(f"{time.time():.3f},{name},{response_time:.1f},{int(exception is None)}\n")

    @events.test_start.add_listener
    def _started(**_kw):
        # The shapes' clock starts here; analyses place the spike window relative to it.
        _samples.write(f"#start,{time.time():.3f}\n")

    @events.quit.add_listener
    def _close(**_kw):
        _samples.close()
