"""Application metrics, exported through Ray's metrics agent beside the built-in ``ray_serve_*`` ones.

Ray prefixes every name with ``ray_`` (counters also get ``_total``) and adds the ``deployment``,
``replica`` and ``application`` tags itself. Tags here are bounded: model name, route template,
outcome/error code.

Ray 2.60 exports a histogram's ``_sum`` rebuilt from bucket midpoints, so it is approximate: exact
averages use counters (e.g. average batch size = model images / batch count), and latency panels
use quantiles from the (exact) bucket counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.batching import BatchInfo

if TYPE_CHECKING:
    from serve_app.admission import Admission

# Measured on a 2-core x86 VM: decode+crop 1-10 ms for VGA-sized photos, ~40 ms for 12 MP JPEGs;
# a mobilenet_v2 batch 10-300 ms. Buckets cover 1 ms .. 10 s.
LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
BYTES_BUCKETS = [1 << 10, 1 << 13, 1 << 15, 1 << 17, 1 << 19, 1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24]


class IngressMetrics:
    """Metrics recorded by the ingress/preprocessing deployment."""

    def __init__(self) -> None:
        self.images = Counter(
            "classifier_images",
            description="Images handled by the ingress, by model and outcome (ok or an error code).",
            tag_keys=("model", "outcome"),
        )
        self.rejected = Counter(
            "classifier_rejected_requests",
            description="Requests answered with an error, by HTTP status and error code.",
            tag_keys=("route", "status", "code"),
        )
        self.request_bytes = Histogram(
            "classifier_request_bytes",
            description="Size of request bodies received on prediction routes.",
            boundaries=BYTES_BUCKETS,
            tag_keys=("route",),
        )
        self.decode_seconds = Histogram(
            "classifier_decode_seconds",
            description="Time to decode, resize and crop one image.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("model",),
        )
        # Admission (admission.py), set once per 0.5 s window and on every health check.
        self.admission_wait_limit = Gauge(
            "classifier_admission_wait_limit_seconds",
            description="Admission: the longest expected wait admitted now (max_expected_wait_s, "
            "lower while a crowd of refused clients waits and the admitted p99 is past "
            "latency_objective_s).",
        )
        self.admission_expected_wait = Gauge(
            "classifier_admission_expected_wait_seconds",
            description="Admission: images in flight / the learned saturated rate; a request is "
            "refused when its images would take this past the wait limit (0 until the rate is learned).",
        )
        self.admission_in_flight = Gauge(
            "classifier_admission_images_in_flight",
            description="Admission: images admitted by this ingress replica and not yet answered.",
        )
        self.admission_waiting = Gauge(
            "classifier_admission_waiting_clients",
            description="Admission: refused clients told (Retry-After) to come back later than now.",
        )
        self.admission_rate = Gauge(
            "classifier_admission_rate_images_per_second",
            description="Admission: images per second this ingress replica's images complete at when "
            "saturated, learned from the traffic; absent until the first saturated window.",
        )

    def observe_admission(self, admission: Admission) -> None:
        self.admission_wait_limit.set(admission.wait_limit_s)
        self.admission_expected_wait.set(admission.expected_wait_s())
        self.admission_in_flight.set(admission.in_flight)
        self.admission_waiting.set(admission.waiting())
        if admission.rate:
            self.admission_rate.set(admission.rate)


class ModelMetrics:
    """Metrics recorded by the batched model deployment."""

    def __init__(self, model: str) -> None:
        self._tags = {"model": model}

        def tagged(metric):
            metric.set_default_tags(dict(self._tags))
            return metric

        def histogram(name: str, description: str, boundaries: list) -> Histogram:
            return tagged(Histogram(name, description, boundaries, tag_keys=("model",)))

        self.batch_seconds = histogram(
            "classifier_batch_inference_seconds",
            "Model forward time for one batch (normalisation included).",
            LATENCY_BUCKETS_S,
        )
        self.image_seconds = histogram(
            "classifier_image_inference_seconds",
            "Model forward time per image: batch time divided by batch size.",
            LATENCY_BUCKETS_S,
        )
        self.batch_size = histogram(
            "classifier_batch_size", "Number of images in each model batch.", BATCH_SIZE_BUCKETS
        )
        self.batch_wait_seconds = histogram(
            "classifier_batch_wait_seconds",
            "How long the oldest image of each model batch waited for it to start.",
            LATENCY_BUCKETS_S,
        )
        self.images = tagged(
            Counter(
                "classifier_model_images",
                "Images run through the model; divided by batch count, the exact mean batch size.",
                tag_keys=("model",),
            )
        )
        self.queued_images = tagged(
            Gauge(
                "classifier_batch_queue_images",
                "Images waiting for a model batch, sampled as each batch starts.",
                tag_keys=("model",),
            )
        )
        self.ready = tagged(
            Gauge(
                "classifier_model_ready",
                "1 when this replica's model is loaded and warmed up, else 0.",
                tag_keys=("model",),
            )
        )

    def observe_queue(self, batch: BatchInfo) -> None:
        self.batch_wait_seconds.observe(batch.wait_s)
        self.queued_images.set(batch.queued_after)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.images.inc(size)
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.image_seconds.observe(seconds / size)


_ingress_metrics: IngressMetrics | None = None


def ingress_metrics() -> IngressMetrics:
    """This process's ingress metrics. A module-level accessor, not a class attribute: Serve pickles
    deployment classes by value, so state set from ``__init__`` would not reach the module-level
    FastAPI exception handlers."""
    global _ingress_metrics
    if _ingress_metrics is None:
        _ingress_metrics = IngressMetrics()
    return _ingress_metrics
