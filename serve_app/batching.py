"""Dynamic batching of images for one model: a batch is formed when the model is free to run it.

Callers ``submit`` a group of images (the rows of an array) and get one result row per image back.
One worker task per batcher runs the model on at most ``max_batch_size`` images at a time: when the
previous batch finishes it takes every image that has queued meanwhile (up to the limit, oldest
first, the rows of one group may go into two batches), and only when fewer than the limit are
waiting and the oldest of them has waited less than ``batch_wait_timeout_s`` does it wait for more.
So under load every batch is full and nobody waits for a timer, and a lone request waits at most
the timeout: the queue-delay semantics of Triton's dynamic batcher. With ``max_concurrent_batches``
above 1, a batch beside one already running starts only when it is full: under load the second core
gets work, while a light load is not split into small batches that slow each other down.

Why not ``@serve.batch``: in Ray 2.60 its batch loop forms the next batch as soon as the first
request of it arrives and the wait runs out, whether or not a batch is still running
(``max_concurrent_batches`` gates only the execution), so under load it runs many small batches one
after another. Measured on 2 cores at 32 concurrent requests: model batches of 2.6 images on
average with ~16 images queued in the replica (docs/PERFORMANCE.md).

Pure asyncio and numpy (no Ray): tests/unit/test_batching.py drives it with a fake model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class _Image:
    row: np.ndarray
    future: asyncio.Future
    queued_at: float


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What ran: the batch's size, how long its oldest image waited, and the images still queued."""

    size: int
    wait_s: float
    queued_after: int


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], Awaitable[np.ndarray]],
        *,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_concurrent_batches: int = 1,
        on_batch: Callable[[BatchInfo], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._run = run
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self._on_batch = on_batch
        self._clock = clock
        self.max_concurrent_batches = max_concurrent_batches
        self._queue: deque[_Image] = deque()
        self._arrived = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._running = 0  # batches executing now

    @property
    def queued(self) -> int:
        """Images waiting for a batch (not counting the batch running)."""
        return len(self._queue)

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Run the model on each row of ``rows``; the results in the same order, stacked."""
        loop = asyncio.get_running_loop()
        now = self._clock()
        images = [_Image(row, loop.create_future(), now) for row in rows]
        self._queue.extend(images)
        self._arrived.set()
        self._workers = [worker for worker in self._workers if not worker.done()]
        while len(self._workers) < self.max_concurrent_batches:
            self._workers.append(loop.create_task(self._work(len(self._workers)), name="batcher"))
        return np.stack(await asyncio.gather(*(image.future for image in images)))

    async def _work(self, index: int) -> None:
        while index < self.max_concurrent_batches:  # a worker beyond a lowered limit stops
            await self._wait_for_batch()
            batch = self._take()
            if batch:
                await self._execute(batch)

    async def _wait_for_batch(self) -> None:
        """Until the limit is queued, or the oldest queued image has waited the timeout while no other
        batch runs."""
        while True:
            self._drop_cancelled()
            if len(self._queue) >= self.max_batch_size:
                return
            if self._running:
                remaining = None  # beside a running batch only a full one starts; its end wakes us
            elif self._queue:
                remaining = self._queue[0].queued_at + self.batch_wait_timeout_s - self._clock()
                if remaining <= 0:
                    return
            else:
                remaining = None
            self._arrived.clear()
            # A timeout only ends this wait: the loop looks again (another worker may have started a
            # batch meanwhile).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _drop_cancelled(self) -> None:
        """Images whose caller gave up (a client that went away) are not run."""
        if any(image.future.done() for image in self._queue):
            self._queue = deque(image for image in self._queue if not image.future.done())

    def _take(self) -> list[_Image]:
        batch: list[_Image] = []
        while self._queue and len(batch) < self.max_batch_size:
            image = self._queue.popleft()
            if not image.future.done():
                batch.append(image)
        return batch

    async def _execute(self, batch: list[_Image]) -> None:
        if self._on_batch is not None:
            self._on_batch(BatchInfo(len(batch), self._clock() - batch[0].queued_at, len(self._queue)))
        self._running += 1
        try:
            results = await self._run(np.stack([image.row for image in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} images")
        except Exception as exc:  # the batch's callers get the error; the worker goes on
            for image in batch:
                if not image.future.done():
                    image.future.set_exception(exc)
            return
        finally:
            self._running -= 1
            self._arrived.set()  # a worker waiting beside this batch may now take a partial one
        for image, result in zip(batch, results, strict=True):
            if not image.future.done():
                image.future.set_result(result)
