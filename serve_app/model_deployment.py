"""The batched model deployment: one loaded classifier per replica behind a dynamic batcher.

Each call carries a small group of images (``(n, H, W, 3)`` uint8, grouped by the ingress). The
replica's batcher (batching.py) runs the model on at most ``max_batch_size`` images at a time and
forms the next batch when the model is free, from every image that queued meanwhile, whichever
ingress replica's call it came in; only a short queue waits up to ``batch_wait_timeout_s`` for more.
Batch size and wait are ``user_config`` and change live through ``reconfigure``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import numpy as np
from ray import serve

from serve_app.batching import Batcher
from serve_app.metrics import ModelMetrics
from serve_app.settings import AppSettings, ModelTuning
from serve_app.torch_model import TorchModel

log = logging.getLogger("ray.serve")


@serve.deployment(
    name="ImageClassifier",
    # Calls (groups of images) in the replica at once: enough to keep full batches queued behind the
    # running one; Ray's default of 5 would starve the batcher.
    max_ongoing_requests=64,
    # Beyond this the caller gets BackPressureError at once, which the ingress answers with a 503.
    max_queued_requests=256,
    ray_actor_options={"num_cpus": 0.75},
    health_check_period_s=10,
)
class ImageClassifier:
    def __init__(self, settings: AppSettings):
        self._metrics = ModelMetrics(settings.model_name)
        self._metrics.ready.set(0)
        self._model = TorchModel(settings)
        self._tuning = ModelTuning()
        self._batchers = [
            Batcher(
                functools.partial(self._run, forward),
                max_batch_size=self._tuning.max_batch_size,
                batch_wait_timeout_s=self._tuning.batch_wait_timeout_s,
                max_concurrent_batches=self._tuning.max_concurrent_batches,
                on_batch=self._metrics.observe_queue,
            )
            for forward in (self._model.forward_uint8, self._model.forward_normalized)
        ]
        self._metrics.ready.set(1)

    def reconfigure(self, user_config: dict) -> None:
        tuning = ModelTuning.model_validate(user_config or {})
        self._model.warm_up(range(1, tuning.max_batch_size + 1))  # only sizes not yet seen
        for batcher in self._batchers:
            batcher.max_batch_size = tuning.max_batch_size
            batcher.batch_wait_timeout_s = tuning.batch_wait_timeout_s
            batcher.max_concurrent_batches = tuning.max_concurrent_batches
        if tuning != self._tuning:
            log.info("model tuning now %s", tuning.model_dump())
        self._tuning = tuning

    def check_health(self) -> None:
        # The constructor returns only once the model is loaded and warmed up, so a constructed
        # replica is healthy; an exception in a forward pass surfaces on the request, not here.
        # Ray stops exporting a gauge ~30 s after its last update: refresh it on every health check.
        self._metrics.ready.set(1)

    def metadata(self) -> dict:
        weights = self._model.weights
        return {
            "model": weights.model_name,
            "model_version": weights.version,
            "device": str(self._model.device),
            "num_classes": self._model.num_classes,
            "load_seconds": round(self._model.load_seconds, 3),
            "tuning": self._tuning.model_dump(),
        }

    async def classify_uint8(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(n, H, W, 3)`` images -> float32 ``(n, classes)`` probabilities."""
        return await self._batchers[0].submit(images)

    async def classify_normalized(self, tensor: np.ndarray) -> np.ndarray:
        """Normalised float32 ``(n, 3, H, W)`` tensors -> class probabilities."""
        return await self._batchers[1].submit(tensor)

    async def _run(self, forward, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        # The forward pass releases the GIL; off the event loop, the next calls keep arriving.
        probabilities = await asyncio.to_thread(forward, batch)
        self._metrics.observe_batch(len(batch), time.perf_counter() - started)
        return probabilities
