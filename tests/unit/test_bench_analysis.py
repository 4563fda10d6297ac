"""Pure logic of the benchmarks: CPU accounting, the served/limit summary, the autoscaling analysis."""

from __future__ import annotations

import numpy as np
import pytest

from bench.autoscale import analyse, replicas_of, window_stats
from bench.serving import cpu_delta, summarize


def test_cpu_delta_counts_new_processes_from_zero_and_sums_roles():
    before = {1: ("model replica", 10.0), 2: ("serve proxy", 5.0)}
    after = {1: ("model replica", 12.0), 2: ("serve proxy", 6.0), 3: ("model replica", 1.0)}
    cores = cpu_delta(before, after, wall_s=2.0)
    assert cores["model replica"] == pytest.approx(1.5)
    assert cores["serve proxy"] == pytest.approx(0.5)
    assert cores["total"] == pytest.approx(2.0)


def _run(c, ips, p99, rep=0):
    return {
        "concurrency": c,
        "images_per_s": ips,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "errors": {},
        "client_cpu_cores": 0.1,
        "repeat": rep,
    }


def test_summary_ratio_knee_and_12mp_comparison():
    result = {
        "pipeline": {"small": {"images_per_s": 200.0}, "phone": {"images_per_s": 100.0}},
        "reference_concurrency": 32,
        "served": [_run(8, 120, 90), _run(32, 170, 300), _run(32, 180, 340, 1), _run(64, 176, 700)],
        "served_12mp": [_run(32, 90, 600)],
    }
    s = summarize(result)
    level32 = next(lv for lv in s["levels"] if lv["concurrency"] == 32)
    assert level32["runs"] == 2 and level32["images_per_s"] == 175
    assert (level32["images_per_s_min"], level32["images_per_s_max"]) == (170, 180)
    assert s["ratio_at_reference"] == pytest.approx(175 / 200)
    assert s["peak_images_per_s"] == 176
    # 0.8 x 176 = 140.8: c=8 (120) misses it, so the knee is the first level at or above: c=32
    assert s["knee_concurrency"] == 32 and s["knee_p99_ms"] == 320
    assert s["ratio_12mp_to_small"] == pytest.approx(90 / 175)
    assert s["ratio_12mp_to_limit"] == pytest.approx(0.9)


def test_replicas_are_read_from_the_serve_api_document():
    doc = {
        "applications": {
            "classifier": {
                "deployments": {
                    "ImageClassifier": {
                        "target_num_replicas": 2,
                        "replicas": [
                            {"replica_id": "a", "state": "RUNNING", "pid": 11},
                            {"replica_id": "b", "state": "STARTING", "pid": None},
                        ],
                    }
                }
            }
        }
    }
    target, reps = replicas_of(doc)
    assert target == 2 and [r["state"] for r in reps] == ["RUNNING", "STARTING"]
    assert replicas_of({}) == (None, [])


def test_autoscaling_analysis_times_the_reaction_from_the_spike_start():
    spike = 1000.0
    one = [{"id": "a", "state": "RUNNING", "pid": 1, "cores": 0.9}]
    timeline = [
        {"t": spike - 1, "target": 1, "replicas": one},
        {"t": spike + 4, "target": 2, "replicas": one},
        {"t": spike + 6, "target": 2, "replicas": one + [{"id": "b", "state": "STARTING"}]},
        {"t": spike + 15, "target": 2, "replicas": one + [{"id": "b", "state": "RUNNING", "cores": 0.05}]},
        {"t": spike + 16, "target": 2, "replicas": one + [{"id": "b", "state": "RUNNING", "cores": 0.7}]},
    ]
    times = np.arange(spike - 20, spike + 40, 0.1)
    lat = np.where((times >= spike) & (times < spike + 16), 800.0, 100.0)
    samples = np.stack([times, lat, np.ones_like(times)], axis=1)
    out = analyse(timeline, samples, spike, spike + 30, busy_cores=0.2)
    assert out["baseline_replicas"] == 1 and out["max_running_replicas"] == 2
    assert out["upscale_decision_s"] == 4
    assert out["new_replica_running_s"] == 15
    assert out["new_replica_serving_s"] == 16  # RUNNING but idle at +15 does not count
    assert out["spike_first_10s"]["p99_ms"] == 800
    assert out["spike_after_scale_up"]["p99_ms"] == 100
    assert out["before_spike"]["p99_ms"] == 100


def test_window_stats_counts_failures_and_ignores_them_for_latency():
    samples = np.array([[1.0, 10.0, 1], [2.0, 20.0, 1], [3.0, 9999.0, 0], [9.0, 5.0, 1]])
    w = window_stats(samples, 0, 5)
    assert w["requests"] == 3 and w["failures"] == 1 and w["p99_ms"] < 21


def test_profile_summary_splits_self_and_inclusive_time(tmp_path):
    from bench.serving import summarize_profile

    raw = tmp_path / "p.txt"
    raw.write_text("main (a.py:1);decode (b.py:2) 30\nmain (a.py:1);forward (c.py:3) 60\nmain (a.py:1) 10\n")
    prof = summarize_profile(raw)
    assert prof["samples"] == 100
    assert prof["self"][0] == {"frame": "forward (c.py:3)", "share": 0.6}
    assert prof["inclusive"][0] == {"frame": "main (a.py:1)", "share": 1.0}


def test_ab_summary_takes_medians_and_counts_the_rounds_each_config_beat_the_baseline():
    from bench.ab import summarize as ab_summary

    def row(rate, p99, shed=0, shed_p99=None):
        return {
            "images_per_s": rate,
            "p99_ms": p99,
            "errors": 0,
            "shed": shed,
            "shed_p99_ms": shed_p99,
            "cpu_ms_per_image": 18.0,
        }

    results = {
        "base.yaml": {32: [row(85.0, 600), row(90.0, 580), row(84.0, 650, shed=3, shed_p99=91.6)]},
        "cand.yaml": {32: [row(95.0, 570), row(89.0, 590), row(99.0, 560)]},
    }
    base, cand = ab_summary(results, "base.yaml")
    assert base == {
        "config": "base.yaml",
        "concurrency": 32,
        "rounds": 3,
        "median_images_per_s": 85.0,
        "median_p99_ms": 600,
        "errors": 0,
        "shed": 3,
        "median_shed_p99_ms": 92,  # only the round that refused something has a refusal latency
        "rounds_faster_than_baseline": None,
    }
    assert cand["median_images_per_s"] == 95.0 and cand["median_p99_ms"] == 570
    assert cand["median_shed_p99_ms"] is None
    assert cand["rounds_faster_than_baseline"] == 2  # round 2 (89 < 90) went to the baseline


def test_ab_row_counts_errors_and_takes_the_servers_cpu_per_image():
    from bench.ab import row_of

    run = {"images_per_s": 100.0, "p99_ms": 500.0, "errors": {"HTTP 500": 2, "timeout": 1}, "shed": 4}
    assert row_of(run)["errors"] == 3 and row_of(run)["shed"] == 4
    assert row_of({**run, "shed_p99_ms": 88.0})["shed_p99_ms"] == 88.0
    assert row_of({**run, "shed": 0, "shed_p99_ms": float("nan")})["shed_p99_ms"] is None
    assert row_of(run)["cpu_ms_per_image"] is None  # no server CPU measured (no temp dir)
    assert row_of({**run, "server_cpu_cores": {"total": 1.8}})["cpu_ms_per_image"] == 18.0


def test_ab_gives_a_process_setting_to_one_config_and_names_it_apart():
    from bench.ab import parse_args

    args = parse_args(
        ["a.yaml", "a.yaml", "b.yaml", "--env", "X=1", "--env-of", "2", "RAY_Y=4", "--env-of", "2", "Z=a=b"]
    )
    assert args.config_env == [{}, {"RAY_Y": "4", "Z": "a=b"}, {}]
    assert args.names == ["a.yaml", "a.yaml RAY_Y=4 Z=a=b", "b.yaml"]
    for bad in (
        ["a.yaml", "b.yaml", "--env-of", "3", "K=V"],
        ["a.yaml", "b.yaml", "--env-of", "0", "K=V"],
        ["a.yaml", "b.yaml", "--env-of", "1", "K"],
        ["a.yaml", "a.yaml"],  # the two would be measured alike
        ["a.yaml", "a.yaml", "--env-of", "1", "K=V", "--env-of", "2", "K=V"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert parse_args(["a.yaml", "b.yaml", "--env-of", "1", "K=V", "--env-of", "2", "K=V"]).names == [
        "a.yaml K=V",
        "b.yaml K=V",
    ]


def test_ab_runs_one_config_on_another_checkouts_code(tmp_path):
    from bench.ab import parse_args
    from harness.ray_cluster import RayCluster

    (tmp_path / "serve_app").mkdir()
    args = parse_args(["a.yaml", "a.yaml", "--code-of", "1", str(tmp_path)])
    assert args.config_code[0] == tmp_path.resolve() and args.names == [
        f"a.yaml code={tmp_path.resolve()}",
        "a.yaml",
    ]
    for bad in (
        ["a.yaml", "a.yaml", "--code-of", "3", str(tmp_path)],
        ["a.yaml", "a.yaml", "--code-of", "1", str(tmp_path / "nothing-here")],  # no serve_app
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)
    # The cluster imports that checkout first: on PYTHONPATH, and as the working directory of
    # `ray start` (Ray's workers import from theirs before PYTHONPATH).
    cluster = RayCluster(env={}, code_dir=tmp_path, temp_dir=str(tmp_path / "ray"))
    assert cluster.process_env()["PYTHONPATH"].split(":")[0] == str(tmp_path)
