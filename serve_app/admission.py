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
behind a long line. ``Retry-After`` says when the refused client would get its turn: every refused
client is told to come back at some time, so the promises not yet due are the clients waiting
(well-behaved ones wait until then), and the next refused client comes after them:
``Retry-After = (clients waiting + 1) / requests admitted per second``, at least 1 s, at most
``max_retry_after_s``. Under a deep overload the retries then arrive at about the rate the replica
admits instead of costing it most of its CPU; under a light one the answer stays 1 s.

Under such a deep overload (a crowd of refused clients waiting) the admitted requests' p99, measured
from admission to answer, is held to ``latency_objective_s`` by lowering the expected wait admitted,
never below a line that keeps the model's batches full; at the knee, where only a few clients are
refused, the line is left as it is (``_hold_the_objective``).

Once per window the state is handed to ``on_window`` (the ingress exports it as gauges: the wait
admitted now, the expected wait, the images in flight, the refused clients waiting, the learned
rate), so an operator sees why requests are refused.

Pure Python (no Ray, no web stack): the clock is injectable for unit tests.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class Admission:
    def __init__(
        self,
        max_wait_s: float,
        *,
        max_retry_after_s: int = 1,
        latency_objective_s: float = 0.0,
        saturation_images: int = 16,
        window_s: float = 0.5,
        smoothing: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        on_window: Callable[[Admission], None] | None = None,
    ):
        self.max_wait_s = max_wait_s
        self.max_retry_after_s = max_retry_after_s
        self.latency_objective_s = latency_objective_s
        self.limit_factor = 1.0  # below 1 while a crowd waits and the admitted tail is past the objective
        self._latencies: deque[tuple[float, float]] = deque()  # (done at, admitted -> done seconds)
        self.saturation_images = saturation_images
        self._promised: deque[float] = deque()  # when each refused client was told to come back
        self._window_admitted = 0  # requests admitted in this window
        self.admitted_per_s: float | None = None  # requests, smoothed over windows
        self._window_s = window_s
        self._smoothing = smoothing
        self._clock = clock
        self.on_window = on_window
        self.in_flight = 0
        self.rate: float | None = None  # images/s when saturated; None until first measured
        self._window_start = clock()
        self._window_done = 0
        self._window_min_in_flight = 0

    def configure(
        self,
        max_wait_s: float,
        saturation_images: int,
        max_retry_after_s: int | None = None,
        latency_objective_s: float | None = None,
    ) -> None:
        self.max_wait_s = max_wait_s
        self.saturation_images = saturation_images
        if max_retry_after_s is not None:
            self.max_retry_after_s = max_retry_after_s
        if latency_objective_s is not None:
            self.latency_objective_s = latency_objective_s

    @property
    def wait_limit_s(self) -> float:
        """The expected wait admitted now: ``max_wait_s``, lowered while the tail is too long, but
        never below a line that keeps the model's batches full (``saturation_images`` and a quarter
        more) — a shorter line would lower the throughput and stop the rate from being learned."""
        return self.max_wait_s * max(self.limit_factor, self._lowest_factor())

    def _lowest_factor(self) -> float:
        if not self.rate or not self.max_wait_s:
            return 1.0
        return min(1.0, max(0.5, 1.25 * self.saturation_images / self.rate / self.max_wait_s))

    def expected_wait_s(self, extra: int = 0) -> float:
        """Seconds until ``extra`` more images would be done behind those in flight (0 while the
        rate is unknown)."""
        if not self.rate:
            return 0.0
        return (self.in_flight + extra) / self.rate

    def refusal(self, images: int) -> int | None:
        """The ``Retry-After`` seconds if ``images`` more would wait too long now, else None (nothing
        is admitted: a peek, for refusing a request before its body is read; a refusal is counted)."""
        self.tick()
        if self.max_wait_s > 0 and self.in_flight and self.expected_wait_s(images) > self.wait_limit_s:
            # At least when the line now in flight has drained, and a second (the header has no
            # fraction); longer while more clients wait for a turn than the replica admits in one.
            drained = math.ceil(self.expected_wait_s() - self.wait_limit_s)
            retry_after = max(1, drained, self.retry_after())
            self._promised.append(self._clock() + retry_after)
            return retry_after
        return None

    def waiting(self) -> int:
        """Refused clients told to come back later than now."""
        now = self._clock()
        while self._promised and self._promised[0] <= now:
            self._promised.popleft()
        return len(self._promised)

    def retry_after(self) -> int:
        """Whole seconds until the clients waiting now and one more would have had their turn."""
        waiting = self.waiting()
        if not waiting:
            return 1
        if not self.admitted_per_s:
            return self.max_retry_after_s
        return max(1, min(self.max_retry_after_s, math.ceil((waiting + 1) / self.admitted_per_s)))

    def try_admit(self, images: int) -> int | None:
        """Admit ``images`` (and count them in flight), or return the ``Retry-After`` seconds to
        answer with. A request is always admitted into an empty replica, whatever its size, and
        everything is while ``max_wait_s`` is 0 (the rate is still learned)."""
        retry_after = self.refusal(images)
        if retry_after is None:
            self.in_flight += images
            self._window_admitted += 1
        return retry_after

    def done(self, images: int, latency_s: float | None = None) -> None:
        """``images`` admitted earlier are answered (or failed) ``latency_s`` after their admission:
        they leave the line."""
        self.tick()
        if latency_s is not None:
            self._latencies.append((self._clock(), latency_s))
        self.in_flight -= images
        self._window_done += images
        self._window_min_in_flight = min(self._window_min_in_flight, self.in_flight)

    def tick(self) -> bool:
        """Close the window if its time is up (every request does; an idle replica's periodic call
        too, so ``on_window`` keeps reporting and an overload's lowered limit is given back).
        True if a window closed (``on_window`` was called)."""
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < self._window_s:
            return False
        if self._window_min_in_flight >= self.saturation_images and self._window_done:
            self.rate = self._smoothed(self.rate, self._window_done / elapsed)
        if self._window_admitted or self.waiting():
            # An idle window (nothing asked, nobody waiting) says nothing about the rate a crowd
            # would be admitted at: the health check's ticks must not wear the estimate down.
            self.admitted_per_s = self._smoothed(self.admitted_per_s, self._window_admitted / elapsed)
        self._window_admitted = 0
        self._hold_the_objective(now, elapsed)
        self._window_start, self._window_done = now, 0
        self._window_min_in_flight = self.in_flight
        if self.on_window is not None:
            self.on_window(self)
        return True

    def _smoothed(self, previous: float | None, sample: float) -> float:
        return sample if previous is None else previous + self._smoothing * (sample - previous)

    def _hold_the_objective(self, now: float, elapsed: float) -> None:
        """While a crowd of refused clients waits (at least ``saturation_images``: more than it takes
        to keep the model's batches full, so turning more away costs no throughput) and the p99 of
        the last ``TAIL_WINDOW_S`` of admitted requests is past the objective, admit 10 % less
        expected wait each window (down to half, or to the line that keeps the batches full: see
        ``wait_limit_s``); otherwise give back 5 % per ``window_s`` elapsed (a replica left idle
        after an overload starts again at its whole limit). At the knee, where a few clients are
        refused now and then, the line is left alone: a shorter one would only turn more of them
        away."""
        while self._latencies and self._latencies[0][0] < now - TAIL_WINDOW_S:
            self._latencies.popleft()
        if not self.latency_objective_s:
            self.limit_factor = 1.0
            return
        tail = _p99([latency for _, latency in self._latencies])
        crowd = self.waiting() >= self.saturation_images
        if crowd and tail is not None and tail > self.latency_objective_s:
            self.limit_factor = max(self._lowest_factor(), self.limit_factor * 0.9)
        else:
            self.limit_factor = min(1.0, self.limit_factor + 0.05 * elapsed / self._window_s)


TAIL_WINDOW_S = 3.0


def _p99(values: list[float]) -> float | None:
    if len(values) < 20:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
