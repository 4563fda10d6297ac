"""The batched model deployment: one loaded classifier per replica behind ``@serve.batch``.

Each call carries a small group of images (``(n, H, W, 3)`` uint8, grouped by the ingress); Serve's
batcher concatenates concurrent groups from every ingress replica into one forward pass of at most
``max_batch_size`` images. Batch size and wait are ``user_config`` and change live through
``reconfigure``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from ray import serve

from serve_app.metrics import ModelMetrics
from serve_app.settings import AppSettings, ModelTuning
from serve_app.torch_model import TorchModel

log = logging.getLogger("ray.serve")


# The batch decorators start from ModelTuning's defaults; reconfigure applies the deployed user_config.
_DEFAULT_TUNING = ModelTuning()


def count_images(groups: list[np.ndarray]) -> int:
    """Batch size in images, not calls (``@serve.batch``'s ``batch_size_fn``)."""
    return sum(len(group) for group in groups)


@serve.deployment(
    name="ImageClassifier",
    # Enough in-flight calls per replica to fill the largest batch twice (one running, one forming);
    # Ray's default of 5 would cap every batch at 5.
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
        self._metrics.ready.set(1)

    def reconfigure(self, user_config: dict) -> None:
        tuning = ModelTuning.model_validate(user_config or {})
        self._model.warm_up(range(1, tuning.max_batch_size + 1))  # only sizes not yet seen
        for method in (self.classify_uint8, self.classify_normalized):
            method.set_max_batch_size(tuning.max_batch_size)
            method.set_batch_wait_timeout_s(tuning.batch_wait_timeout_s)
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

    @serve.batch(
        max_batch_size=_DEFAULT_TUNING.max_batch_size,
        batch_wait_timeout_s=_DEFAULT_TUNING.batch_wait_timeout_s,
        batch_size_fn=count_images,
    )
    async def classify_uint8(self, groups: list[np.ndarray]) -> list[np.ndarray]:
        """Groups of uint8 ``(n, H, W, 3)`` images -> float32 ``(n, classes)`` probabilities each."""
        return await self._run(self._model.forward_uint8, groups)

    @serve.batch(
        max_batch_size=_DEFAULT_TUNING.max_batch_size,
        batch_wait_timeout_s=_DEFAULT_TUNING.batch_wait_timeout_s,
        batch_size_fn=count_images,
    )
    async def classify_normalized(self, groups: list[np.ndarray]) -> list[np.ndarray]:
        """Groups of normalised float32 ``(n, 3, H, W)`` tensors -> class probabilities each."""
        return await self._run(self._model.forward_normalized, groups)

    async def _run(self, predict, groups: list[np.ndarray]) -> list[np.ndarray]:
        started = time.perf_counter()
        batch = groups[0] if len(groups) == 1 else np.concatenate(groups)
        # The forward pass releases the GIL; running it off the event loop lets the next batch
        # queue up meanwhile.
        probabilities = await asyncio.to_thread(predict, batch)
        self._metrics.observe_batch(len(batch), time.perf_counter() - started)
        return np.split(probabilities, np.cumsum([len(g) for g in groups[:-1]]))
