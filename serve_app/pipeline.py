"""The request path under the routes, in plain Python: admit → decode → group → model call → outcome.

``ImageIngress`` (ingress.py) holds one ``ClassificationPipeline`` per replica and only adapts HTTP to
it. The pipeline first admits the request's images by their expected wait (admission.py: a 503 with
``Retry-After`` at once when they could not be answered in time), decodes them in a thread pool (PIL
releases the GIL), hands each decoded
image to ``group`` (the ingress's ``@serve.batch`` method, which collects the images of concurrent
requests into one model call made with ``call_model``), counts every image's outcome and turns the
model side's failures into a retryable 503. It needs no Ray cluster: tests/unit/test_pipeline.py runs
it with a fake model handle and a fake ``group``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from serve_app.admission import Admission
from serve_app.errors import NotReady, Overloaded, ServiceError
from serve_app.imaging import Preprocessing, decode_image

# What the model side raises -> (the images' outcome label, the 503's message).
MODEL_FAILURES: dict[type[Exception], tuple[str, str]] = {
    BackPressureError: ("overloaded", "the model queue is full; retry shortly"),
    RayActorError: ("replica_failed", "a model replica failed during the request; retry"),
}


class ClassificationPipeline:
    """``model`` is the model deployment's handle (``classify_uint8``, ``classify_normalized``, ``metadata``,
    each called as ``.remote(...)``); ``metrics`` has ``images`` (a counter) and ``decode_seconds``
    (a histogram), as serve_app.metrics.IngressMetrics."""

    def __init__(
        self,
        model: Any,
        *,
        preprocessing: Preprocessing,
        max_image_pixels: int,
        metrics: Any,
        model_name: str,
        group: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None,
        decode_workers: int = 4,
        admission: Admission | None = None,
    ):
        self._model = model
        self._preprocessing = preprocessing
        self._max_image_pixels = max_image_pixels
        self._metrics = metrics
        self._tags = {"model": model_name}
        self.group = group or self._ungrouped
        self._decode_pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode")
        self.admission = admission or Admission(max_wait_s=0.0)
        self.model_calls = 0  # ``call_model`` calls out at the model now

    async def require_ready(self, timeout_s: float) -> dict:
        """The model answers within ``timeout_s``, or a 503 ``not_ready``."""
        try:
            return await asyncio.wait_for(self._model.metadata.remote(), timeout_s)
        except (asyncio.TimeoutError, BackPressureError, RayActorError) as exc:  # noqa: UP041 - not builtin TimeoutError on 3.10
            raise NotReady(f"model is not ready: {type(exc).__name__}") from None

    def decode(self, data: bytes) -> np.ndarray:
        started = time.perf_counter()
        array = decode_image(data, self._preprocessing, self._max_image_pixels)
        self._metrics.decode_seconds.observe(time.perf_counter() - started, tags=self._tags)
        return array

    async def classify_images(self, images: list[bytes]) -> list[np.ndarray]:
        """Encoded images -> one probability vector each, in order. A bad image fails the request
        (its error, every image counted with its code) before any model call."""
        loop = asyncio.get_running_loop()
        with self._admitted(len(images)):
            try:
                arrays = await asyncio.gather(
                    *(loop.run_in_executor(self._decode_pool, self.decode, data) for data in images)
                )
            except ServiceError as exc:
                self._count(len(images), exc.code)
                raise
            with self._outcome(len(images)):
                return await asyncio.gather(*(self.group(a) for a in arrays))

    async def classify_tensor(self, tensor: np.ndarray, group_size: int) -> np.ndarray:
        """An already-normalised FP32 ``[N, 3, H, W]`` tensor, sent in calls of at most ``group_size``."""
        with self._admitted(len(tensor)), self._outcome(len(tensor)):
            parts = await asyncio.gather(
                *(
                    self._model.classify_normalized.remote(tensor[i : i + group_size])
                    for i in range(0, len(tensor), group_size)
                )
            )
        return np.concatenate(parts)

    async def call_model(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """One model call for a group of decoded images (what ``group`` collects)."""
        self.model_calls += 1
        try:
            return list(await self._model.classify_uint8.remote(np.stack(arrays)))
        finally:
            self.model_calls -= 1

    async def _ungrouped(self, array: np.ndarray) -> np.ndarray:
        return (await self.call_model([array]))[0]

    def refuse_if_overloaded(self) -> None:
        """A 503 before the request's body is even read, when one more image would already wait too
        long (counted as one refused image: its count is not known yet)."""
        retry_after = self.admission.refusal(1)
        if retry_after is not None:
            self._refuse(1, retry_after)

    def _refuse(self, count: int, retry_after: int) -> None:
        self._count(count, Overloaded.code)
        wait = self.admission.expected_wait_s(count)
        raise Overloaded(
            f"overloaded: the expected wait ({wait:.2f}s) exceeds {self.admission.wait_limit_s:.2f}s; "
            f"retry after {retry_after}s",
            retry_after,
        )

    @contextlib.contextmanager
    def _admitted(self, count: int):
        """``count`` images in flight while the block runs, or a 503 now if they would wait too long."""
        retry_after = self.admission.try_admit(count)
        if retry_after is not None:
            self._refuse(count, retry_after)
        admitted_at = time.perf_counter()
        try:
            yield
        finally:
            self.admission.done(count, time.perf_counter() - admitted_at)

    @contextlib.contextmanager
    def _outcome(self, count: int):
        try:
            yield
        except tuple(MODEL_FAILURES) as exc:
            outcome, message = next(v for t, v in MODEL_FAILURES.items() if isinstance(exc, t))
            self._count(count, outcome)
            raise Overloaded(message) from None
        self._count(count, "ok")

    def _count(self, count: int, outcome: str) -> None:
        self._metrics.images.inc(count, tags={**self._tags, "outcome": outcome})
