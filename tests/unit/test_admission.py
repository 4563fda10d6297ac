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
        self.admitted_at: dict[int, float] = {}
        self.latencies: list[float] = []  # admitted -> answered, seconds

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
                latency = self.clock.now - self.admitted_at.pop(client)
                self.latencies.append(latency)
                self.adm.done(1, latency)
                if client < clients:
                    self.next_try[client] = self.clock.now
                else:
                    self.next_try.pop(client, None)
            for client, at in list(self.next_try.items()):
                if at <= self.clock.now and client not in self.line:
                    retry_after = self.adm.try_admit(1)
                    if retry_after is None:
                        self.line.append(client)
                        self.admitted_at[client] = self.clock.now
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
    assert set(capped.run(clients=300, seconds=5)[2]) == {2}  # it would say 3 s, the cap says 2
    # When the overload ends, a refusal says 1 s again within a few seconds.
    adaptive.run(clients=20, seconds=5)
    assert adaptive.adm.retry_after() == 1 and adaptive.adm.waiting() == 0


def p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * len(values))]


def test_under_overload_the_admitted_tail_is_held_to_the_objective_and_the_limit_comes_back():
    clock = Clock()
    # ~30 images in flight at 100 img/s: admitted requests take ~0.3 s, past a 0.2 s objective.
    held = learned(10, clock)
    held.configure(0.3, 16, latency_objective_s=0.2)
    clients = Clients(held, clock)
    clients.run(clients=300, seconds=10)
    clients.latencies.clear()
    clients.run(clients=300, seconds=10)
    assert held.limit_factor < 0.8 and p99(clients.latencies) < 0.25, (
        held.limit_factor,
        p99(clients.latencies),
    )
    # The overload over, the whole limit comes back: under a light load, or at the first request
    # after an idle spell.
    lowered = held.limit_factor
    clients.run(clients=10, seconds=8)
    assert held.limit_factor == 1.0
    clients.run(clients=300, seconds=5)
    assert held.limit_factor <= lowered + 0.1
    clock.now += 30
    held.refusal(1)
    assert held.limit_factor == 1.0
    # Without an objective the line stays at the limit, and the tail with it.
    free = learned(10, clock)
    free_clients = Clients(free, clock)
    free_clients.run(clients=300, seconds=10)
    assert free.limit_factor == 1.0 and p99(free_clients.latencies) > 0.28


def test_a_long_tail_without_refusals_does_not_shorten_the_line():
    """25 clients (0.25 s at 100 img/s, inside the 0.3 s limit): nobody is refused, so their load is
    what the replica gets and a shorter line would only turn them away, whatever the objective."""
    clock = Clock()
    adm = learned(10, clock)
    adm.configure(0.3, 16, latency_objective_s=0.2)
    refused, admitted, _ = Clients(adm, clock).run(clients=25, seconds=10)
    assert refused == 0 and admitted > 900 and adm.limit_factor == 1.0


def test_at_the_knee_a_few_refusals_do_not_shorten_the_line():
    """32 clients where ~30 fit: now and then one or two are refused and wait a second; that is no
    crowd, so the tail's objective does not lower the limit (which would refuse more of them)."""
    clock = Clock()
    adm = learned(10, clock)
    adm.configure(0.3, 16, latency_objective_s=0.2)
    refused, admitted, _ = Clients(adm, clock).run(clients=32, seconds=10)
    assert 0 < refused and admitted > 900 and adm.limit_factor == 1.0


def test_each_window_reports_the_state_an_operator_needs_and_an_idle_tick_gives_the_limit_back():
    """What the ingress exports as gauges (``on_window``): once per window, the limit (lowered under
    a deep overload), the expected wait, the images in flight, the refused clients waiting and the
    learned rate; the health check's ``tick`` keeps reporting without traffic."""
    clock = Clock()
    reports: list[dict] = []

    def report(adm: Admission) -> None:
        reports.append(
            {
                "limit": adm.wait_limit_s,
                "expected": adm.expected_wait_s(),
                "in_flight": adm.in_flight,
                "waiting": adm.waiting(),
                "rate": adm.rate,
            }
        )

    adm = learned(10, clock)
    adm.configure(0.3, 16, latency_objective_s=0.2)
    adm.on_window = report
    clients = Clients(adm, clock)
    clients.run(clients=300, seconds=10)
    # About one report per 0.5 s window of the 10 s (the windows close on the clients' calls).
    assert 18 <= len(reports) <= 21, len(reports)
    overload = reports[-1]
    assert overload["rate"] == pytest.approx(100, rel=0.1)
    assert overload["waiting"] > 200 and overload["in_flight"] >= 16
    assert overload["limit"] < 0.3 * 0.8  # lowered to hold the 0.2 s objective
    assert overload["expected"] == pytest.approx(overload["in_flight"] / overload["rate"])
    # The clients gone and the line drained, nothing calls the admission; the health check's tick
    # closes the window: the refused clients' promises have come due and the limit is whole again.
    while adm.in_flight:
        adm.done(1)
    reports.clear()
    clock.now += 15
    assert adm.tick()  # a window closed, and reported itself
    assert reports == [{"limit": 0.3, "expected": 0.0, "in_flight": 0, "waiting": 0, "rate": adm.rate}]
    assert not adm.tick()  # within the same window: nothing to report (the ingress reports itself)
    assert len(reports) == 1
    # An hour of idle health checks (every 10 s) keeps the admissions-per-second estimate that the
    # next crowd's Retry-After is computed from.
    before = adm.admitted_per_s
    for _ in range(360):
        clock.now += 10
        adm.tick()
    assert before > 50 and adm.admitted_per_s == before


def test_the_ingress_health_check_reports_the_admission_once_per_check(monkeypatch):
    """``ImageIngress.check_health`` (Serve calls it every 10 s): when its tick closes a window, the
    window reports itself through ``on_window`` and nothing more is set; within a window, the check
    reports the admission itself, so an idle replica's gauges never go stale."""
    from types import SimpleNamespace

    from serve_app import ingress

    by_window: list[Admission] = []  # what ``on_window`` reported
    by_check: list[Admission] = []  # what the health check set itself
    gauges = SimpleNamespace(observe_admission=by_check.append)
    check_health = ingress.ImageIngress.func_or_class.check_health
    # Serve's ingress wrapper holds a copy of the class, with its own module globals.
    monkeypatch.setitem(check_health.__globals__, "ingress_metrics", lambda: gauges)
    clock = Clock()
    adm = Admission(0.35, clock=clock, on_window=by_window.append)
    replica = SimpleNamespace(_pipeline=SimpleNamespace(admission=adm))

    clock.now += 10
    check_health(replica)  # closes a window: reported once, by the window
    assert (by_window, by_check) == ([adm], [])
    check_health(replica)  # the same window: the check reports itself
    assert (by_window, by_check) == ([adm], [adm])
    clock.now += 10
    check_health(replica)
    assert (by_window, by_check) == ([adm, adm], [adm])
