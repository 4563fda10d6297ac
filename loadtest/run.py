"""Run the Locust suite headless for a fixed time and gate on the SLO.

    python -m loadtest.run --host http://127.0.0.1:8000 --shape steady --users 16 --duration 60 \
        --out artifacts/loadtest [--slo-p99-ms 500] [--slo-error-ratio 0.001] [--smoke]

Locust runs as its own process (it monkey-patches the standard library with gevent, so it is never
imported here). Writes ``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``,
``report.html`` and ``slo.json`` into ``--out``. Exit status: 0 SLO met, 1 SLO missed, 2 the run
itself failed (Locust crashed or wrote no statistics).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from loadtest.shapes import SHAPES
from loadtest.slo import DEFAULT_ERROR_RATIO, DEFAULT_P99_MS, evaluate

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def locust_command(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        args.host,
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "report.html"),
        "--only-summary",
        "--loglevel",
        args.loglevel,
        "--stop-timeout",
        "10",
    ]


def locust_env(args: argparse.Namespace) -> dict[str, str]:
    env = {
        **os.environ,
        "LOADTEST_SHAPE": args.shape,
        "LOADTEST_USERS": str(args.users),
        "LOADTEST_DURATION": str(args.duration),
        "LOADTEST_STEPS": str(args.steps),
        "LOADTEST_SPIKE_FACTOR": str(args.spike_factor),
        "LOADTEST_WAIT_S": str(args.wait),
        "LOADTEST_MODEL": args.model,
    }
    if args.samples:
        env["LOADTEST_SAMPLES"] = str(Path(args.samples).resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--shape", choices=SHAPES, default="steady")
    parser.add_argument("--users", type=int, help="steady users / last step / spike peak (16)")
    parser.add_argument("--duration", type=float, help="seconds (60; 6 with --smoke)")
    parser.add_argument("--steps", type=int, default=4, help="step ramp: number of steps")
    parser.add_argument("--spike-factor", type=int, default=10, help="spike: peak / baseline users")
    parser.add_argument(
        "--wait", type=float, default=0.0, help="mean think time per user in seconds (0: closed loop)"
    )
    parser.add_argument("--model", default="mobilenet_v2", help="model name for the v2 route")
    parser.add_argument("--out", default="artifacts/loadtest", help="output directory")
    parser.add_argument("--slo-p99-ms", type=float, default=DEFAULT_P99_MS)
    parser.add_argument("--slo-error-ratio", type=float, default=DEFAULT_ERROR_RATIO)
    parser.add_argument("--samples", help="also write per-request samples (CSV) to this file")
    parser.add_argument("--smoke", action="store_true", help="a few seconds with few users (CI)")
    parser.add_argument("--loglevel", default="WARNING")
    args = parser.parse_args(argv)
    if args.users is None:
        args.users = 4 if args.smoke else 16
    if args.duration is None:
        args.duration = 6.0 if args.smoke else 60.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("locust_*.csv"):
        stale.unlink()
    cmd = locust_command(args, out)
    print(
        f"loadtest: {args.shape} shape, {args.users} users, {args.duration:g}s against {args.host}",
        flush=True,
    )
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = children.ru_utime + children.ru_stime
    try:
        # Locust's own exit code is 1 whenever any request failed; the SLO decides here instead.
        proc = subprocess.run(cmd, env=locust_env(args), cwd=REPO, timeout=args.duration + 90)
    except subprocess.TimeoutExpired:
        print("loadtest: Locust did not finish in time", file=sys.stderr)
        return 2
    stats = out / "locust_stats.csv"
    if proc.returncode not in (0, 1) or not stats.exists():
        print(
            f"loadtest: Locust failed (exit {proc.returncode}, stats written: {stats.exists()})",
            file=sys.stderr,
        )
        return 2
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Locust shares the machine with the server when both run here: report what it cost.
    locust_cpu_s = children.ru_utime + children.ru_stime - cpu_before
    result = evaluate(stats, args.slo_p99_ms, args.slo_error_ratio)
    summary = {
        "host": args.host,
        "shape": args.shape,
        "users": args.users,
        "duration_s": args.duration,
        "locust_cpu_s": round(locust_cpu_s, 2),
        "locust_cpu_cores": round(locust_cpu_s / args.duration, 3),
        **result.as_dict(),
    }
    (out / "slo.json").write_text(json.dumps(summary, indent=2) + "\n")
    verdict = "PASS" if result.passed else "FAIL: " + "; ".join(result.reasons)
    print(
        f"loadtest: {result.requests} requests, {result.rps:.1f} req/s, "
        f"p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, "
        f"errors {result.failures} ({result.error_ratio:.3%}), Locust used "
        f"{summary['locust_cpu_cores']:.2f} cores -> SLO {verdict}",
        flush=True,
    )
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
