"""Admission by expected wait (serve_app.admission) on a fake clock, and in the pipeline.

The rate is learned only from windows in which the replica was saturated; until then nothing is
refused; once learned, a request whose images would wait longer than the limit behind those in
flight is refused with a Retry-After, before any decoding, and what is admitted leaves the line when
it is answered or fails (the pipeline's side: tests/unit/test_pipeline.py).
"""

from __future__ import annotations

import pytest

from serve_app.admission import Admission


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def saturate(adm: Admission, clock: Clock, rate: float, seconds: float, in_flight: int) -> None:
    """Keep ``in_flight`` images in flight, completing ``rate`` images/s for ``seconds`` (admitted
    whatever the limit, as a line that built up before it was set)."""
    limit = adm.max_wait_s
    adm.configure(0.0, adm.saturation_images)
    for _ in range(round(rate * seconds)):
        while adm.in_flight < in_flight:
            assert adm.try_admit(1) is None
        clock.now += 1 / rate
        adm.done(1)
    adm.configure(limit, adm.saturation_images)


def test_nothing_is_refused_until_a_saturated_window_taught_the_rate():
    clock = Clock()
    adm = Admission(0.3, saturation_images=16, clock=clock)
    for _ in range(500):  # a burst far past anything the replica could serve in 0.3 s
        assert adm.try_admit(1) is None
    assert adm.rate is None and adm.expected_wait_s() == 0


def test_a_lightly_loaded_replica_does_not_learn_its_load_as_its_rate():
    clock = Clock()
    adm = Admission(0.3, saturation_images=16, clock=clock)
    saturate(adm, clock, rate=20, seconds=3, in_flight=4)  # 4 in flight: below saturation
    assert adm.rate is None
    # A spike of 10 clients right after is admitted, though 10 / 20 img/s would be 0.5 s.
    assert all(adm.try_admit(1) is None for _ in range(10))


def test_saturated_rate_is_learned_and_bounds_the_line_to_the_expected_wait():
    clock = Clock()
    adm = Admission(0.3, saturation_images=16, clock=clock)
    saturate(adm, clock, rate=100, seconds=3, in_flight=20)
    assert adm.rate == pytest.approx(100, rel=0.05)
    # 0.3 s at 100 img/s: about 30 images may be in flight, the next ones are refused.
    admitted = 0
    while adm.try_admit(1) is None:
        admitted += 1
        assert admitted < 100
    assert adm.in_flight == pytest.approx(30, abs=2)
    assert adm.try_admit(1) == 1  # Retry-After: at least a second
    # A request of many images is refused whole, not partly admitted.
    before = adm.in_flight
    assert adm.try_admit(8) is not None and adm.in_flight == before
    # As the line drains, new images are admitted again.
    for _ in range(10):
        clock.now += 0.01
        adm.done(1)
    assert adm.try_admit(5) is None


def test_the_rate_follows_a_slower_machine_and_retry_after_grows_with_the_line():
    clock = Clock()
    adm = Admission(0.3, saturation_images=16, clock=clock)
    saturate(adm, clock, rate=100, seconds=2, in_flight=25)
    saturate(adm, clock, rate=20, seconds=10, in_flight=25)  # e.g. 12 MP photos
    assert adm.rate == pytest.approx(20, rel=0.1)
    assert adm.try_admit(1) is not None  # 25 in flight at 20 img/s: 1.25 s
    adm.configure(0.0, 16)
    assert all(adm.try_admit(1) is None for _ in range(40))  # a line admitted while admission was off
    adm.configure(0.3, 16)
    assert adm.try_admit(1) == 3  # (64 / 20 = 3.2 s) - 0.3 s, rounded up


def test_zero_admits_everything_but_keeps_learning():
    clock = Clock()
    adm = Admission(0.0, saturation_images=16, clock=clock)
    saturate(adm, clock, rate=50, seconds=2, in_flight=30)
    assert adm.rate == pytest.approx(50, rel=0.05)
    assert all(adm.try_admit(1) is None for _ in range(200))


def test_an_empty_replica_admits_even_a_request_longer_than_the_limit():
    clock = Clock()
    adm = Admission(0.3, saturation_images=16, clock=clock)
    saturate(adm, clock, rate=100, seconds=2, in_flight=20)
    while adm.in_flight:
        adm.done(1)
    assert adm.try_admit(64) is None  # 0.64 s of work, but nothing is ahead of it


def test_a_peek_refuses_like_admission_but_counts_nothing():
    clock = Clock()
    adm = Admission(0.3, saturation_images=16, clock=clock)
    saturate(adm, clock, rate=100, seconds=2, in_flight=40)
    before = adm.in_flight
    assert adm.refusal(1) == 1 and adm.in_flight == before
    while adm.in_flight > 10:
        adm.done(1)
    assert adm.refusal(1) is None and adm.in_flight == 10


class Clients:
    """Closed-loop clients of one image each against a replica completing ``rate`` images/s; a refused
    client waits the Retry-After it was given, an answered one sends its next request at once."""

    def __init__(self, adm: Admission, clock: Clock, rate: float = 100.0):
        self.adm, self.clock, self.dt = adm, clock, 1 / rate  # one image completes per step
        self.next_try: dict[int, float] = {}
        self.line: list[int] = []  # clients whose image is in flight, oldest first

    def run(self, clients: int, seconds: float) -> tuple[int, int, list[int]]:
        """The refusals and admissions of the run, and the Retry-After values given."""
        for client in range(clients):
            self.next_try.setdefault(client, self.clock.now)
        for client in [c for c in self.next_try if c >= clients and c not in self.line]:
            del self.next_try[client]  # fewer clients: those not in flight stop
        refused = admitted = 0
        told: list[int] = []
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now += self.dt
            if self.line:
                client = self.line.pop(0)
                self.adm.done(1)
                if client < clients:
                    self.next_try[client] = self.clock.now
                else:
                    self.next_try.pop(client, None)
            for client, at in list(self.next_try.items()):
                if at <= self.clock.now and client not in self.line:
                    retry_after = self.adm.try_admit(1)
                    if retry_after is None:
                        self.line.append(client)
                        self.next_try[client] = float("inf")
                        admitted += 1
                    else:
                        self.next_try[client] = self.clock.now + retry_after
                        refused += 1
                        told.append(retry_after)
        return refused, admitted, told


def learned(max_retry_after_s: int, clock: Clock) -> Admission:
    adm = Admission(0.3, max_retry_after_s=max_retry_after_s, saturation_images=16, clock=clock)
    saturate(adm, clock, rate=100, seconds=2, in_flight=30)
    while adm.in_flight:
        adm.done(1)
    return adm


def test_retry_after_follows_the_depth_of_the_overload_and_falls_back_to_a_second():
    clock = Clock()
    # 300 clients against a replica that holds ~30 in flight at 100 img/s. Told "1 s" every time,
    # the ~270 waiting come back every second: about 3 refusals for each admission.
    fixed = Clients(learned(1, clock), clock)
    fixed.run(clients=300, seconds=5)
    refused, admitted, told = fixed.run(clients=300, seconds=10)
    assert set(told) == {1} and refused / admitted > 2, (refused, admitted)
    # Told when their turn comes (~270 waiting / ~100 admitted a second), the refused come back at
    # about the rate the replica admits: the retries no longer cost it most of its work.
    adaptive = Clients(learned(10, clock), clock)
    adaptive.run(clients=300, seconds=5)
    refused, admitted, told = adaptive.run(clients=300, seconds=10)
    assert 0.5 < refused / admitted < 1.5, (refused, admitted)
    assert 2 <= min(told) and max(told) <= 4, sorted(set(told))
    # As capped: never above max_retry_after_s.
    capped = Clients(learned(2, clock), clock)
    capped.run(clients=300, seconds=5)
    assert set(capped.run(clients=300, seconds=5)[2]) <= {1, 2}
    # When the overload ends, a refusal says 1 s again within a few seconds.
    adaptive.run(clients=20, seconds=5)
    assert adaptive.adm.retry_after() == 1 and adaptive.adm.waiting() == 0
