"""Autoscaling experiment: a 10× Locust spike against a Serve config with autoscaling enabled.

    python -m bench.autoscale [--config bench/configs/autoscale.yaml] [--users 20] [--duration 100]
                              [--out artifacts/bench/autoscale] [--smoke]

Starts a real Ray cluster (``harness/ray_cluster.py``), deploys the config as KubeRay does, runs the
Locust spike shape (``python -m loadtest.run --shape spike``, its own process) and meanwhile polls the
dashboard's Serve API (``/api/serve/applications/``, with the cluster's token) every 0.5 s for the
model deployment's replicas and their states. A new replica "serves traffic" from the first poll at
which its process (pid from the API) burns more than ``--busy-cores`` of CPU. Reports the time from
the spike's start to the upscale decision, to RUNNING, and to serving traffic, and p50/p99 of the
requests sent before, during and after the spike. Writes ``autoscale.json`` and ``autoscale.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

from loadtest.shapes import ShapeParams

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "bench" / "configs" / "autoscale.yaml"
APP, DEPLOYMENT = "classifier", "ImageClassifier"


def replicas_of(apps_doc: dict) -> tuple[int | None, list[dict]]:
    dep = apps_doc.get("applications", {}).get(APP, {}).get("deployments", {}).get(DEPLOYMENT, {})
    reps = [
        {"id": r.get("replica_id"), "state": r.get("state"), "pid": r.get("pid")}
        for r in dep.get("replicas", [])
    ]
    return dep.get("target_num_replicas"), reps


class Poller(threading.Thread):
    """Polls the Serve API and the replicas' CPU time; keeps a timeline of (unix time, ...)."""

    def __init__(self, http, dashboard_url: str, period_s: float = 0.5):
        super().__init__(daemon=True)
        self.http, self.url, self.period = http, f"{dashboard_url}/api/serve/applications/", period_s
        self.timeline: list[dict] = []
        self._halt = threading.Event()
        self._cpu: dict[int, tuple[float, float]] = {}

    def _cores(self, pid: int | None, now: float) -> float | None:
        if not pid:
            return None
        try:
            t = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        cpu = t.user + t.system
        prev = self._cpu.get(pid)
        self._cpu[pid] = (now, cpu)
        return None if prev is None else (cpu - prev[1]) / max(1e-3, now - prev[0])

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.time()
            try:
                target, reps = replicas_of(self.http.get(self.url, timeout=5).json())
                for r in reps:
                    r["cores"] = self._cores(r["pid"], now)
                self.timeline.append({"t": now, "target": target, "replicas": reps})
            except Exception as exc:  # noqa: BLE001 - a missed poll is recorded, not fatal
                self.timeline.append({"t": now, "error": repr(exc)})
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def read_samples(path: Path) -> tuple[float | None, np.ndarray]:
    """(test start unix time, array of [t, latency_ms, ok]) from loadtest's samples file."""
    start, rows = None, []
    for line in path.read_text().splitlines():
        if line.startswith("#start,"):
            start = float(line.split(",")[1])
            continue
        parts = line.split(",")  # unix time, request name, latency ms, ok
        rows.append((float(parts[0]), float(parts[-2]), int(parts[-1])))
    return start, np.array(rows, dtype=float).reshape(-1, 3)


def window_stats(samples: np.ndarray, t0: float, t1: float) -> dict:
    sel = samples[(samples[:, 0] >= t0) & (samples[:, 0] < t1)] if len(samples) else samples
    ok = sel[sel[:, 2] == 1] if len(sel) else sel
    lat = ok[:, 1] if len(ok) else np.array([])
    return {
        "requests": int(len(sel)),
        "failures": int(len(sel) - len(ok)),
        "rps": float(len(sel) / (t1 - t0)) if t1 > t0 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
    }


def analyse(
    timeline: list[dict], samples: np.ndarray, spike_start: float, spike_end: float, busy_cores: float
) -> dict:
    """Reaction times (seconds after the spike starts) and latency per phase."""
    polls = [p for p in timeline if "replicas" in p]
    before = [p for p in polls if p["t"] < spike_start]
    baseline_ids = {r["id"] for r in (before[-1]["replicas"] if before else []) if r["state"] == "RUNNING"}
    base_target = before[-1]["target"] if before else None
    t_decision = t_running = t_serving = None
    for p in polls:
        if p["t"] < spike_start:
            continue
        new = [r for r in p["replicas"] if r["id"] not in baseline_ids]
        if t_decision is None and (new or (base_target is not None and p["target"] > base_target)):
            t_decision = p["t"] - spike_start
        if t_running is None and any(r["state"] == "RUNNING" for r in new):
            t_running = p["t"] - spike_start
        if t_serving is None and any(
            r["state"] == "RUNNING" and (r.get("cores") or 0) > busy_cores for r in new
        ):
            t_serving = p["t"] - spike_start
    running = [(p["t"], sum(r["state"] == "RUNNING" for r in p["replicas"])) for p in polls]
    after = [c for t, c in running if t >= spike_end]
    t_last = samples[:, 0].max() if len(samples) else spike_end
    return {
        "baseline_replicas": len(baseline_ids),
        "max_running_replicas": max((c for _, c in running), default=0),
        "running_replicas_at_end": after[-1] if after else None,
        "upscale_decision_s": t_decision,
        "new_replica_running_s": t_running,
        "new_replica_serving_s": t_serving,
        "before_spike": window_stats(samples, spike_start - 20, spike_start),
        "spike": window_stats(samples, spike_start, spike_end),
        "spike_first_10s": window_stats(samples, spike_start, spike_start + 10),
        "spike_after_scale_up": (
            window_stats(samples, spike_start + t_serving, spike_end) if t_serving is not None else None
        ),
        "after_spike": window_stats(samples, spike_end, t_last + 0.001),
    }


def plot(result: dict, timeline: list[dict], samples: np.ndarray, t0: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(9, 4))
    polls = [p for p in timeline if "replicas" in p]
    ax1.step(
        [p["t"] - t0 for p in polls],
        [sum(r["state"] == "RUNNING" for r in p["replicas"]) for p in polls],
        where="post",
        color="C0",
        label="RUNNING model replicas",
    )
    ax1.step(
        [p["t"] - t0 for p in polls],
        [p["target"] for p in polls],
        where="post",
        color="C0",
        ls=":",
        label="target replicas",
    )
    ax1.set_ylabel("replicas")
    top = max([p["target"] or 0 for p in polls] + [len(p["replicas"]) for p in polls] + [1])
    ax1.set_ylim(0, top + 1)
    ax1.set_yticks(range(top + 2))
    ax1.set_xlabel("seconds since the test started")
    ax2 = ax1.twinx()
    if len(samples):
        bins = np.arange(samples[:, 0].min(), samples[:, 0].max() + 2, 2.0)
        idx = np.digitize(samples[:, 0], bins)
        xs, p99 = [], []
        for i in np.unique(idx):
            lat = samples[(idx == i) & (samples[:, 2] == 1), 1]
            if len(lat):
                xs.append(bins[i - 1] - t0)
                p99.append(np.percentile(lat, 99))
        ax2.plot(xs, p99, color="C1", label="p99 per 2 s (ms)")
    ax2.set_ylabel("p99 latency (ms)")
    s0, s1 = result["spike_window_s"]
    ax1.axvspan(s0, s1, color="grey", alpha=0.15, label="10x spike")
    fig.legend(loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.autoscale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--users", type=int, help="spike peak users (20); baseline is a tenth")
    p.add_argument("--duration", type=float, help="whole run in seconds (100)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--busy-cores",
        type=float,
        default=0.2,
        help="CPU (cores) above which a new replica counts as serving traffic",
    )
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "autoscale")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    args.users = args.users or (10 if args.smoke else 20)
    args.duration = args.duration or (10.0 if args.smoke else 100.0)
    args.out.mkdir(parents=True, exist_ok=True)
    params = ShapeParams(users=args.users, duration_s=args.duration)

    from harness.ray_cluster import RayCluster, serve_env

    config = yaml.safe_load(args.config.read_text())
    samples_path = args.out / "samples.csv"
    samples_path.unlink(missing_ok=True)
    env = {**serve_env(), **dict(kv.split("=", 1) for kv in args.env)}  # production defaults + overrides
    with RayCluster(num_cpus=args.cores, env=env) as cluster:
        print(f"deploying {args.config} ...", flush=True)
        cluster.deploy(config)
        poller = Poller(cluster.http, cluster.dashboard_url)
        poller.start()
        cmd = [
            sys.executable,
            "-m",
            "loadtest.run",
            "--host",
            cluster.serve_url,
            "--shape",
            "spike",
            "--users",
            str(args.users),
            "--duration",
            str(args.duration),
            "--out",
            str(args.out / "locust"),
            "--samples",
            str(samples_path),
            "--slo-p99-ms",
            "500",
        ]
        proc = subprocess.run(
            cmd, cwd=REPO, timeout=args.duration + 120, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        time.sleep(1)
        poller.stop()
    start, samples = read_samples(samples_path)
    if start is None:
        raise RuntimeError("the load test recorded no start time")
    s0, s1 = params.spike_window()
    result = {
        "config": str(args.config),
        "autoscaling_config": next(
            d for d in config["applications"][0]["deployments"] if d["name"] == DEPLOYMENT
        ).get("autoscaling_config"),
        "users_peak": args.users,
        "users_baseline": params.baseline_users(),
        "duration_s": args.duration,
        "spike_window_s": [s0, s1],
        "loadtest_exit": proc.returncode,
        "slo": json.loads((args.out / "locust" / "slo.json").read_text())
        if (args.out / "locust" / "slo.json").exists()
        else None,
        **analyse(poller.timeline, samples, start + s0, start + s1, args.busy_cores),
    }
    (args.out / "autoscale.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "timeline.json").write_text(
        json.dumps([{**p, "t": round(p["t"] - start, 2)} for p in poller.timeline]) + "\n"
    )
    plot(result, poller.timeline, samples, start, args.out / "autoscale.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("slo",)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
