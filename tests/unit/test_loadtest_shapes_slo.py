"""Pure logic of the load test: the load shapes and the SLO gate over Locust's CSV."""

from __future__ import annotations

import csv

import pytest

from loadtest.shapes import ShapeParams, tick
from loadtest.slo import evaluate

LOCUST_HEADER = [
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    "50%",
    "66%",
    "75%",
    "80%",
    "90%",
    "95%",
    "98%",
    "99%",
    "99.9%",
    "99.99%",
    "100%",
]


def test_steady_holds_the_user_count_then_stops():
    p = ShapeParams(users=12, duration_s=30)
    assert {tick("steady", t, p)[0] for t in (0, 10, 29.9)} == {12}
    assert tick("steady", 30, p) is None


def test_step_ramp_climbs_in_equal_steps_to_the_target():
    p = ShapeParams(users=16, duration_s=40, steps=4)
    assert [tick("step", t, p)[0] for t in (0, 9.9, 10, 20, 35)] == [4, 4, 8, 12, 16]
    assert tick("step", 40, p) is None


def test_spike_is_ten_times_the_baseline_inside_its_window_only():
    p = ShapeParams(users=20, duration_s=100, spike_factor=10)
    start, end = p.spike_window()
    assert (start, end) == (30, 70)
    assert tick("spike", start - 0.1, p)[0] == 2
    assert tick("spike", start, p)[0] == 20
    assert tick("spike", end - 0.1, p)[0] == 20
    assert tick("spike", end, p)[0] == 2
    assert tick("spike", 100, p) is None


def test_unknown_shape_is_an_error():
    with pytest.raises(ValueError, match="unknown shape"):
        tick("sawtooth", 0, ShapeParams())


def _stats(tmp_path, requests, failures, p99):
    path = tmp_path / "locust_stats.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LOCUST_HEADER)
        for name in ("/predict raw", "Aggregated"):
            w.writerow(
                [
                    "POST" if name != "Aggregated" else "",
                    name,
                    requests,
                    failures,
                    40,
                    45,
                    5,
                    900,
                    300,
                    20.5,
                    0.0,
                    40,
                    50,
                    60,
                    70,
                    80,
                    90,
                    95,
                    p99,
                    p99,
                    p99,
                    p99,
                ]
            )
    return path


def test_slo_passes_under_both_thresholds(tmp_path):
    result = evaluate(_stats(tmp_path, 10000, 9, 480))
    assert result.passed and result.reasons == []
    assert result.per_task["/predict raw"]["requests"] == 10000


@pytest.mark.parametrize(
    ("failures", "p99", "reason"),
    [
        (10, 480, "error ratio"),  # exactly 0.1 % is a miss: the SLO is "< 0.1 %"
        (0, 500, "p99"),
        (0, "N/A", "p99"),  # no successful request at all
    ],
)
def test_slo_fails_on_either_threshold(tmp_path, failures, p99, reason):
    result = evaluate(_stats(tmp_path, 10000, failures, p99))
    assert not result.passed
    assert any(reason in r for r in result.reasons)


def test_slo_fails_a_run_without_requests(tmp_path):
    result = evaluate(_stats(tmp_path, 0, 0, 0))
    assert not result.passed and "no requests were made" in result.reasons
