"""The request path under the routes (serve_app.pipeline) with a fake model handle: no Ray cluster.

Decode → group → model call → outcome: images keep their order, a bad image fails the request before
any model call and is counted with its code, the model side's back-pressure and replica loss become a
retryable 503 counted as such, a tensor goes in calls of at most the group size, and readiness maps a
slow or failing model to 503 not_ready; images that would wait too long are refused before decoding.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from harness.images import encode
from serve_app.admission import Admission
from serve_app.errors import InvalidImage, NotReady, Overloaded
from serve_app.imaging import Preprocessing
from serve_app.pipeline import ClassificationPipeline

PREP = Preprocessing(resize_size=32, crop_size=24)
CLASSES = 5


class Remote:
    """A handle method: ``.remote(x)`` returns an awaitable, as a DeploymentHandle's does."""

    def __init__(self, fn, calls: list, delay_s: float = 0.0):
        self.fn, self.calls, self.delay_s = fn, calls, delay_s

    def remote(self, *args):
        self.calls.append(args)

        async def answer():
            await asyncio.sleep(self.delay_s)
            return self.fn(*args)

        return answer()


class FakeModel:
    """Scores each image by its mean pixel, so results can be matched to inputs."""

    def __init__(self, fail: Exception | None = None, metadata_delay_s: float = 0.0):
        self.calls: list = []

        def score(batch):
            if fail:
                raise fail
            return np.stack([self._scores(float(a.mean())) for a in batch])

        self.classify_uint8 = Remote(lambda batch: list(score(batch)), self.calls)
        self.classify_normalized = Remote(score, self.calls)
        self.metadata = Remote(lambda: {"ready": True}, [], delay_s=metadata_delay_s)

    @staticmethod
    def _scores(mean: float) -> np.ndarray:
        scores = np.zeros(CLASSES, np.float32)
        scores[0] = mean
        return scores


class Recorder:
    def __init__(self):
        self.counts: Counter = Counter()
        self.observed = 0

    def inc(self, value=1, tags=None):
        self.counts[tags["outcome"]] += value

    def observe(self, value, tags=None):
        self.observed += 1


class FakeMetrics:
    def __init__(self):
        self.images = Recorder()
        self.decode_seconds = Recorder()


def pipeline(model: FakeModel, **kwargs) -> tuple[ClassificationPipeline, FakeMetrics]:
    metrics = FakeMetrics()
    return ClassificationPipeline(
        model, preprocessing=PREP, max_image_pixels=10_000, metrics=metrics, model_name="fake", **kwargs
    ), metrics


def png(grey: int) -> bytes:
    return encode(Image.new("RGB", (40, 30), (grey, grey, grey)), "PNG")


def run(coro):
    return asyncio.run(coro)


def test_images_are_decoded_classified_and_counted_in_order():
    model = FakeModel()
    pipe, metrics = pipeline(model)
    results = run(pipe.classify_images([png(10), png(200), png(90)]))
    means = [r[0] for r in results]
    assert means[0] < means[2] < means[1]
    assert metrics.images.counts == {"ok": 3}
    assert metrics.decode_seconds.observed == 3
    # Ungrouped (no `group` given): one model call per image, each a batch of one 3x24x24 image.
    assert [args[0].shape for args in model.calls] == [(1, 24, 24, 3)] * 3


def test_the_group_decides_how_images_reach_the_model():
    model = FakeModel()
    seen: list[int] = []
    holder: dict = {}

    async def group(array):  # what the ingress's @serve.batch does: many images, one call
        seen.append(array.shape[0])
        return (await holder["pipe"].call_model([array, array]))[0]

    pipe, _ = pipeline(model, group=group)
    holder["pipe"] = pipe
    run(pipe.classify_images([png(1), png(2)]))
    assert seen == [24, 24]
    assert [args[0].shape[0] for args in model.calls] == [2, 2]


def test_the_pipeline_counts_its_model_calls_out_at_the_model():
    """``model_calls``: what the ingress's grouping reads to decide whether an image waits for company."""
    model = FakeModel()
    model.classify_uint8.delay_s = 0.05  # each call stays out a while
    pipe, _ = pipeline(model)
    seen: list[int] = []

    async def two_calls():
        async def call(grey):
            seen.append(pipe.model_calls)
            return await pipe.call_model([np.full((24, 24, 3), grey, np.uint8)])

        first = asyncio.ensure_future(call(1))
        await asyncio.sleep(0)  # the first call is out
        await asyncio.gather(first, call(2))

    run(two_calls())
    assert seen == [0, 1] and pipe.model_calls == 0
    failing, _ = pipeline(FakeModel(fail=RayActorError()))
    with pytest.raises(RayActorError):
        run(failing.call_model([np.zeros((24, 24, 3), np.uint8)]))
    assert failing.model_calls == 0  # a failed call is no longer out


def test_the_ingress_waits_for_company_only_while_its_calls_are_out():
    """``ImageIngress._group_image``: an image waits up to ``model_call_wait_s`` for others to share
    its model call while the replica has calls out at the model, and not at all with none out."""
    from types import SimpleNamespace

    from serve_app import ingress

    class Group:  # the @serve.batch method: its wait is set before each image goes in
        def __init__(self):
            self.waits: list[float] = []

        def set_batch_wait_timeout_s(self, wait_s: float) -> None:
            self.waits.append(wait_s)

        async def __call__(self, array):
            return array

    group_image = ingress.ImageIngress.func_or_class._group_image
    replica = SimpleNamespace(
        _group=Group(),
        _tuning=SimpleNamespace(model_call_wait_s=0.01),
        _pipeline=SimpleNamespace(model_calls=0),
    )
    assert run(group_image(replica, "image")) == "image"
    replica._pipeline.model_calls = 3
    run(group_image(replica, "image"))
    assert replica._group.waits == [0.0, 0.01]


def test_a_bad_image_fails_the_request_before_any_model_call():
    model = FakeModel()
    pipe, metrics = pipeline(model)
    with pytest.raises(InvalidImage):
        run(pipe.classify_images([png(5), b"not an image"]))
    assert model.calls == []
    assert metrics.images.counts == {InvalidImage.code: 2}


@pytest.mark.parametrize(
    "failure, outcome",
    [
        (BackPressureError(num_queued_requests=10, max_queued_requests=10), "overloaded"),
        (RayActorError(), "replica_failed"),
    ],
)
def test_model_side_failures_are_a_retryable_503(failure, outcome):
    pipe, metrics = pipeline(FakeModel(fail=failure))
    with pytest.raises(Overloaded) as err:
        run(pipe.classify_images([png(5), png(6)]))
    assert err.value.status == 503 and err.value.headers["Retry-After"]
    assert metrics.images.counts == {outcome: 2}
    with pytest.raises(Overloaded):
        run(pipe.classify_tensor(np.zeros((3, 3, 24, 24), np.float32), group_size=2))
    assert metrics.images.counts == {outcome: 5}


def test_a_tensor_goes_in_calls_of_at_most_the_group_size():
    model = FakeModel()
    pipe, metrics = pipeline(model)
    tensor = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 3, 24, 24), np.float32)
    probabilities = run(pipe.classify_tensor(tensor, group_size=2))
    assert [args[0].shape[0] for args in model.calls] == [2, 2, 1]
    assert probabilities[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert metrics.images.counts == {"ok": 5}


def test_readiness_is_a_503_when_the_model_is_slow():
    pipe, _ = pipeline(FakeModel())
    assert run(pipe.require_ready(1.0)) == {"ready": True}
    slow, _ = pipeline(FakeModel(metadata_delay_s=1.0))
    with pytest.raises(NotReady) as err:
        run(slow.require_ready(0.05))
    assert err.value.status == 503 and "TimeoutError" in err.value.message


def test_the_pipeline_refuses_before_decoding_and_releases_what_it_admitted():
    clock = iter(i / 100 for i in range(10**6))  # 100 images/s, 40 in flight
    adm = Admission(0.0, saturation_images=16, clock=lambda: next(clock))
    for _ in range(200):
        while adm.in_flight < 40:
            adm.try_admit(1)
        adm.done(1)
    adm.configure(0.3, 16)  # 39 in flight at ~100 img/s: about 0.4 s ahead
    model = FakeModel()
    pipe, metrics = pipeline(model, admission=adm)
    with pytest.raises(Overloaded) as err:
        asyncio.run(pipe.classify_images([png(1), png(2)]))
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    assert "expected wait" in err.value.message
    assert model.calls == [] and metrics.decode_seconds.observed == 0
    assert metrics.images.counts == {Overloaded.code: 2}
    # Before the body is read: the same refusal, counted as one image.
    with pytest.raises(Overloaded):
        pipe.refuse_if_overloaded()
    assert metrics.images.counts == {Overloaded.code: 3}
    while adm.in_flight:
        adm.done(1)
    pipe.refuse_if_overloaded()  # an empty line refuses nothing
    # Admitted, answered or failed: either way the images leave the line.
    assert len(asyncio.run(pipe.classify_images([png(1), png(2)]))) == 2
    with pytest.raises(InvalidImage):
        asyncio.run(pipe.classify_images([png(1), b"broken"]))
    assert adm.in_flight == 0
