"""Admission by expected wait: refuse at once what could not be answered within the objective.

A request's images are admitted only if the images already in flight in this ingress replica would
be done within ``max_wait_s`` at the rate this replica completes images when it is saturated:

    expected wait = images in flight / saturated completion rate

The rate is learned, not configured: completions are counted in windows of ``window_s``, and a
window counts only if at least ``saturation_images`` images were in flight throughout it (enough to
keep the model's batches full), so a lightly loaded replica, whose throughput is just its load, does
not teach it a low rate. Until the first saturated window nothing is refused; after that the
estimate follows the machine (bigger images, more or fewer model replicas) window by window.

What is refused gets a 503 with ``Retry-After`` before any decoding, so an overload costs the
replica little and the requests it admits keep their latency, instead of every request queueing
behind a long line. Pure Python (no Ray, no web stack): the clock is injectable for unit tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Admission:
    def __init__(
        self,
        max_wait_s: float,
        *,
        saturation_images: int = 16,
        window_s: float = 0.5,
        smoothing: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_wait_s = max_wait_s
        self.saturation_images = saturation_images
        self._window_s = window_s
        self._smoothing = smoothing
        self._clock = clock
        self.in_flight = 0
        self.rate: float | None = None  # images/s when saturated; None until first measured
        self._window_start = clock()
        self._window_done = 0
        self._window_min_in_flight = 0

    def configure(self, max_wait_s: float, saturation_images: int) -> None:
        self.max_wait_s = max_wait_s
        self.saturation_images = saturation_images

    def expected_wait_s(self, extra: int = 0) -> float:
        """Seconds until ``extra`` more images would be done behind those in flight (0 while the
        rate is unknown)."""
        if not self.rate:
            return 0.0
        return (self.in_flight + extra) / self.rate

    def refusal(self, images: int) -> int | None:
        """The ``Retry-After`` seconds if ``images`` more would wait too long now, else None (nothing
        is counted: a peek, for refusing a request before its body is read)."""
        self._tick()
        if self.max_wait_s > 0 and self.in_flight and self.expected_wait_s(images) > self.max_wait_s:
            # When the line now in flight has drained, at least a second (the header has no fraction).
            return max(1, math.ceil(self.expected_wait_s() - self.max_wait_s))
        return None

    def try_admit(self, images: int) -> int | None:
        """Admit ``images`` (and count them in flight), or return the ``Retry-After`` seconds to
        answer with. A request is always admitted into an empty replica, whatever its size, and
        everything is while ``max_wait_s`` is 0 (the rate is still learned)."""
        retry_after = self.refusal(images)
        if retry_after is None:
            self.in_flight += images
        return retry_after

    def done(self, images: int) -> None:
        """``images`` admitted earlier are answered (or failed): they leave the line."""
        self._tick()
        self.in_flight -= images
        self._window_done += images
        self._window_min_in_flight = min(self._window_min_in_flight, self.in_flight)

    def _tick(self) -> None:
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed >= self._window_s:
            if self._window_min_in_flight >= self.saturation_images and self._window_done:
                sample = self._window_done / elapsed
                self.rate = (
                    sample if self.rate is None else self.rate + self._smoothing * (sample - self.rate)
                )
            self._window_start, self._window_done = now, 0
            self._window_min_in_flight = self.in_flight
