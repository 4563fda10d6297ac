"""Measure what a user of ``make run`` sees: time from ``serve run serve_config.yaml`` (with the
``serve.env`` settings) to ``/ready``,
and sequential single-request latency for a few real photos.

    python -m bench.startup [--requests 50] [--port 8000]

Runs ``serve run`` exactly as the README does (its own local Ray), then stops it and every process it
started (found as its descendants before stopping), so nothing is left holding the port.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
import skimage
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=args.port)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(config, fh)
    serve = str(Path(sys.executable).with_name("serve"))
    from harness.ray_cluster import serve_env  # what `make run` exports from serve.env

    env = {**os.environ, **serve_env(), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [serve, "run", fh.name],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        ready_s = None
        while time.perf_counter() - started < args.timeout and proc.poll() is None:
            try:
                if requests.get(f"{base}/ready", timeout=2).status_code == 200:
                    ready_s = time.perf_counter() - started
                    break
            except requests.RequestException:
                pass
            time.sleep(0.25)
        if ready_s is None:
            print("server did not become ready", file=sys.stderr)
            return 1
        print(f"serve run -> /ready: {ready_s:.1f} s")
        cat = Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png").convert("RGB")
        buf = io.BytesIO()
        cat.resize((500, 375)).save(buf, "JPEG", quality=90)
        photos = {
            "chelsea.png 451x300": (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes(),
            "JPEG 500x375": buf.getvalue(),
        }
        with requests.Session() as http:
            for name, data in photos.items():
                for _ in range(3):  # warm connections and caches
                    http.post(f"{base}/predict", files={"file": ("x", data)}).raise_for_status()
                times = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    http.post(f"{base}/predict", files={"file": ("x", data)}).raise_for_status()
                    times.append((time.perf_counter() - t0) * 1000)
                print(
                    f"single request {name}: p50 {statistics.median(times):.1f} ms, "
                    f"p99 {percentile(times, 99):.1f} ms over {args.requests} sequential requests"
                )
    finally:
        # Ray's processes (raylet, GCS, replicas, haproxy) are descendants of `serve run`.
        family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        os.unlink(fh.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
