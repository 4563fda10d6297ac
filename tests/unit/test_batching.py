"""The model's dynamic batcher (serve_app.batching) with a fake model: no Ray, no torch.

A batch is formed when the model is free: what queued while a batch ran goes into the next one, up to
the limit, oldest first, a group's images split over two batches when they do not fit; only a short
queue waits for the timeout. Results go back to their callers in order; a caller that gave up is not
run; a failing batch fails its own callers and the next batch runs.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serve_app.batching import Batcher, BatchInfo


class FakeModel:
    """Each result row is the image's value times ten; a batch runs until ``release`` is set."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_on = fail_on

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append([int(v) for v in batch[:, 0]])
        await self.release.wait()
        if self.fail_on is not None and self.fail_on in batch[:, 0]:
            raise ValueError(f"bad image {self.fail_on}")
        return batch * 10


def images(*values: int) -> np.ndarray:
    return np.array([[v, v] for v in values], np.float32)


async def behind_a_running_batch(batcher: Batcher, model: FakeModel, *groups: tuple[int, ...]):
    """Submit image 0 and hold its batch running, then submit ``groups`` (queued behind it): the
    first call's task and one task per group."""
    model.release.clear()
    first = asyncio.create_task(batcher.submit(images(0)))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(batcher.submit(images(*group))) for group in groups]
    await asyncio.sleep(0.01)
    return first, later


def test_what_queues_while_a_batch_runs_fills_the_next_batches_in_order():
    async def scenario():
        model = FakeModel()
        seen: list[BatchInfo] = []
        batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=0.0, on_batch=seen.append)
        # Groups of 3, 2, 4 and 1 images arrive while the first batch runs: 10 images for batches of 4.
        first, later = await behind_a_running_batch(batcher, model, (1, 2, 3), (4, 5), (6, 7, 8, 9), (10,))
        model.release.set()
        results = await asyncio.gather(first, *later)
        return model.batches, results, seen

    batches, results, seen = asyncio.run(scenario())
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [info.size for info in seen] == [1, 4, 4, 2]
    assert [info.queued_after for info in seen] == [0, 6, 2, 0]
    assert [r[:, 0].tolist() for r in results] == [[0], [10, 20, 30], [40, 50], [60, 70, 80, 90], [100]]


def test_a_call_larger_than_a_batch_runs_in_consecutive_batches():
    """The ingress's calls carry up to 8 images while the model's batches take 4 (serve_config.yaml):
    one call's images fill the next batches and come back in order, as one result."""

    async def scenario():
        model = FakeModel()
        batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=0.0)
        first, later = await behind_a_running_batch(batcher, model, tuple(range(1, 9)), (9,))
        model.release.set()
        results = await asyncio.gather(first, *later)
        return model.batches, results

    batches, results = asyncio.run(scenario())
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert [r[:, 0].tolist() for r in results] == [[0], [10, 20, 30, 40, 50, 60, 70, 80], [90]]


def test_a_lone_image_waits_for_company_at_most_the_timeout():
    async def scenario():
        model = FakeModel()
        batcher = Batcher(model, max_batch_size=8, batch_wait_timeout_s=0.2)
        started = time.perf_counter()
        lone = await batcher.submit(images(1))
        lone_s = time.perf_counter() - started
        # Two arriving within the timeout share one batch.
        started = time.perf_counter()
        pair = await asyncio.gather(
            batcher.submit(images(2)), asyncio.sleep(0.05, result=None), batcher.submit(images(3))
        )
        return model.batches, lone, lone_s, pair, time.perf_counter() - started

    batches, lone, lone_s, pair, pair_s = asyncio.run(scenario())
    assert lone[0, 0] == 10 and 0.15 <= lone_s < 1.0
    assert batches[1:] == [[2, 3]] and pair[0][0, 0] == 20 and pair[2][0, 0] == 30


def test_a_full_queue_does_not_wait_for_the_timeout():
    async def scenario():
        batcher = Batcher(FakeModel(), max_batch_size=4, batch_wait_timeout_s=5.0)
        started = time.perf_counter()
        await batcher.submit(images(1, 2, 3, 4, 5, 6, 7, 8))
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 1.0


def test_a_caller_that_gave_up_is_not_run():
    async def scenario():
        model = FakeModel()
        batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=0.0)
        first, (gone, kept) = await behind_a_running_batch(batcher, model, (1, 2), (3,))
        gone.cancel()
        model.release.set()
        await first
        return model.batches, await kept

    batches, kept = asyncio.run(scenario())
    assert batches == [[0], [3]] and kept[0, 0] == 30


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs():
    async def scenario():
        model = FakeModel(fail_on=2)
        batcher = Batcher(model, max_batch_size=2, batch_wait_timeout_s=0.0)
        first, (bad, good) = await behind_a_running_batch(batcher, model, (1, 2), (3,))
        model.release.set()
        await first
        with pytest.raises(ValueError, match="bad image 2"):
            await bad
        return model.batches, await good

    batches, good = asyncio.run(scenario())
    assert batches == [[0], [1, 2], [3]] and good[0, 0] == 30


def test_the_limit_and_the_wait_change_live():
    async def scenario():
        model = FakeModel()
        batcher = Batcher(model, max_batch_size=8, batch_wait_timeout_s=0.0)
        await batcher.submit(images(1, 2, 3, 4))
        batcher.max_batch_size = 1
        await batcher.submit(images(5, 6))
        return model.batches

    assert asyncio.run(scenario()) == [[1, 2, 3, 4], [5], [6]]


def test_beside_a_running_batch_only_a_full_batch_starts():
    """Two batches at once: under load (a full batch queued) the second starts at once; a light load
    is not split into small batches beside the running one: it waits for that batch to end."""

    async def scenario():
        model = FakeModel()
        batcher = Batcher(model, max_batch_size=3, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
        first, [partial] = await behind_a_running_batch(batcher, model, (1, 2))
        beside_partial = [list(b) for b in model.batches]
        full = asyncio.create_task(batcher.submit(images(3, 4, 5)))
        await asyncio.sleep(0.01)
        # 1, 2 (oldest first) and 3 make a full batch, which starts beside the running one.
        beside_full = [list(b) for b in model.batches]
        model.release.set()
        results = await asyncio.gather(first, partial, full)
        return beside_partial, beside_full, model.batches, results

    beside_partial, beside_full, batches, results = asyncio.run(scenario())
    assert beside_partial == [[0]]
    assert beside_full == [[0], [1, 2, 3]]
    assert batches == [[0], [1, 2, 3], [4, 5]]
    assert [r[:, 0].tolist() for r in results] == [[0], [10, 20], [30, 40, 50]]


def test_one_batch_at_a_time_when_the_limit_is_one():
    async def scenario():
        model = FakeModel()
        batcher = Batcher(model, max_batch_size=2, batch_wait_timeout_s=0.0, max_concurrent_batches=1)
        first, later = await behind_a_running_batch(batcher, model, (1, 2), (3, 4))
        running = [list(b) for b in model.batches]
        model.release.set()
        await asyncio.gather(first, *later)
        return running, model.batches

    running, batches = asyncio.run(scenario())
    assert running == [[0]] and batches == [[0], [1, 2], [3, 4]]
