"""Interleaved A/B of Serve configs on this machine: which tuning serves more, measured fairly.

    python -m bench.ab serve_config.yaml candidate.yaml [more.yaml ...]
                       [--rounds 6] [--concurrency 8 32] [--duration 15] [--warmup 2]
                       [--env K=V ...] [--env-of N K=V ...] [--code-of N DIR ...]
                       [--out artifacts/bench] [--label ab]

A shared VM's speed drifts by tens of percent within minutes (``bench.serving`` prints a probe of it),
so two configs measured one after the other compare the host as much as the configs. Here every
config gets its own Ray cluster (``harness/ray_cluster.py``, the Ray settings of ``serve.env``), all
of them started before the first measurement and kept up side by side; then each round measures
every config at every concurrency (``bench.loadgen``: multipart uploads of the 500×375 JPEG, clients
honouring ``Retry-After``), in the opposite order on odd rounds. An idle cluster still costs its Ray
processes' CPU, the same for all configs. Prints each measurement and, per config and concurrency,
the median of the rounds and how many rounds it served more than the first config (the baseline);
writes ``<label>.json`` into ``--out``.

``--env`` sets a Ray process setting for every cluster; ``--env-of N K=V`` for the N-th config's
cluster only (1 is the baseline), so a process setting is compared with the same Serve config given
twice: ``python -m bench.ab serve_config.yaml serve_config.yaml --env-of 2 RAY_SERVE_HAPROXY_NBTHREAD=1``.
``--code-of N DIR`` runs the N-th config's cluster on another checkout's code, so a code change is
compared the same way: ``git worktree add /tmp/ab/base HEAD~1``, then ``python -m bench.ab
serve_config.yaml serve_config.yaml --code-of 1 /tmp/ab/base``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

from bench.serving import REPO, cpu_ms_per_image, run_loadgen, wait_ready, warm_up
from harness.ray_cluster import RayCluster, serve_env
from loadtest.images import small_jpeg


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", type=Path, nargs="+", help="Serve configs; the first is the baseline")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    p.add_argument("--env", action="append", default=[], help="K=V for every cluster's Ray processes")
    p.add_argument(
        "--env-of",
        nargs=2,
        action="append",
        default=[],
        metavar=("N", "K=V"),
        help="K=V for the N-th config's cluster only (1 = the baseline)",
    )
    p.add_argument(
        "--code-of",
        nargs=2,
        action="append",
        default=[],
        metavar=("N", "DIR"),
        help="the N-th config's cluster runs the serve_app of the checkout DIR (a git worktree)",
    )
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    p.add_argument("--label", default="ab")
    args = p.parse_args(argv)
    if len(args.configs) < 2:
        p.error("give at least two configs to compare")
    args.config_env = [{} for _ in args.configs]
    for n, kv in args.env_of:
        if not n.isdigit() or not 1 <= int(n) <= len(args.configs) or "=" not in kv:
            p.error(f"--env-of {n} {kv}: N is 1..{len(args.configs)}, then K=V")
        key, value = kv.split("=", 1)
        args.config_env[int(n) - 1][key] = value
    args.config_code = [REPO for _ in args.configs]
    for n, directory in args.code_of:
        if not n.isdigit() or not 1 <= int(n) <= len(args.configs):
            p.error(f"--code-of {n} {directory}: N is 1..{len(args.configs)}")
        if not (Path(directory) / "serve_app").is_dir():
            p.error(f"--code-of {n} {directory}: no serve_app there")
        args.config_code[int(n) - 1] = Path(directory).resolve()
    args.names = config_names(args.configs, args.config_env, args.config_code)
    if len(set(args.names)) != len(args.names):
        p.error(f"two configs would be measured alike: {args.names}")
    return args


def config_names(
    configs: list[Path], config_env: list[dict[str, str]], config_code: list[Path] | None = None
) -> list[str]:
    """A name per config: its path, and the settings and the code only its cluster has."""
    codes = config_code or [REPO] * len(configs)
    return [
        str(path)
        + "".join(f" {k}={v}" for k, v in sorted(env.items()))
        + ("" if code == REPO else f" code={code}")
        for path, env, code in zip(configs, config_env, codes, strict=True)
    ]


def row_of(run: dict) -> dict:
    cpu_ms = cpu_ms_per_image([run])
    return {
        "images_per_s": run["images_per_s"],
        "p99_ms": run["p99_ms"],
        "errors": sum(run["errors"].values()),
        "shed": run.get("shed", 0),
        "shed_p99_ms": run.get("shed_p99_ms") if run.get("shed") else None,
        "cpu_ms_per_image": None if cpu_ms is None else round(cpu_ms, 2),
    }


def _median_of_present(values) -> int | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present)) if present else None


def summarize(results: dict[str, dict[int, list[dict]]], baseline: str) -> list[dict]:
    """Per config and concurrency: medians over the rounds, and the rounds it beat the baseline in."""
    out = []
    for name, by_c in results.items():
        for c, rows in by_c.items():
            base = results[baseline][c]
            out.append(
                {
                    "config": name,
                    "concurrency": c,
                    "rounds": len(rows),
                    "median_images_per_s": round(statistics.median(r["images_per_s"] for r in rows), 1),
                    "median_p99_ms": round(statistics.median(r["p99_ms"] for r in rows)),
                    "errors": sum(r["errors"] for r in rows),
                    "shed": sum(r["shed"] for r in rows),
                    "median_shed_p99_ms": _median_of_present(r.get("shed_p99_ms") for r in rows),
                    "rounds_faster_than_baseline": None
                    if name == baseline
                    else sum(r["images_per_s"] > b["images_per_s"] for r, b in zip(rows, base, strict=True)),
                }
            )
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    image = args.out / "bench_500x375.jpg"
    image.write_bytes(small_jpeg())
    env = {**serve_env(), **dict(kv.split("=", 1) for kv in args.env)}
    names = args.names
    results: dict[str, dict[int, list[dict]]] = {n: {c: [] for c in args.concurrency} for n in names}
    with contextlib.ExitStack() as stack:
        clusters = []
        for name, path, own_env, code in zip(
            names, args.configs, args.config_env, args.config_code, strict=True
        ):
            cluster = stack.enter_context(RayCluster(num_cpus=2, env={**env, **own_env}, code_dir=code))
            cluster.deploy(yaml.safe_load(path.read_text()))
            wait_ready(cluster.serve_url)
            warm_up(cluster.serve_url, [small_jpeg()], 10)
            clusters.append((name, cluster))
            print(f"up: {name} at {cluster.serve_url}", flush=True)
        for r in range(args.rounds):
            for name, cluster in clusters if r % 2 == 0 else clusters[::-1]:
                for c in args.concurrency:
                    run = run_loadgen(
                        cluster.serve_url,
                        image,
                        c,
                        args.warmup,
                        args.duration,
                        cluster.temp_dir,
                        honor_retry_after=True,
                    )
                    row = row_of(run)
                    results[name][c].append(row)
                    print(
                        f"round {r} c={c:<4d} {name:40s} {row['images_per_s']:6.1f} img/s  p99 "
                        f"{row['p99_ms']:5.0f} ms  CPU/img {row['cpu_ms_per_image']} ms  "
                        f"errors {row['errors']}  shed {row['shed']}"
                        + (f" (p99 {row['shed_p99_ms']:.0f} ms)" if row["shed_p99_ms"] else ""),
                        flush=True,
                    )
    summary = summarize(results, names[0])
    print(f"\nmedians of {args.rounds} interleaved rounds ({args.duration:g} s each); baseline {names[0]}")
    for s in summary:
        beat = (
            ""
            if s["rounds_faster_than_baseline"] is None
            else f"  faster in {s['rounds_faster_than_baseline']}"
        )
        print(
            f"c={s['concurrency']:<4d} {s['config']:40s} {s['median_images_per_s']:6.1f} img/s  "
            f"p99 {s['median_p99_ms']:5d} ms  errors {s['errors']}  shed {s['shed']}"
            + (f" (p99 {s['median_shed_p99_ms']} ms)" if s["median_shed_p99_ms"] is not None else "")
            + beat
        )
    path = args.out / f"{args.label}.json"
    path.write_text(
        json.dumps(
            {
                "label": args.label,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join(["python -m bench.ab", *sys.argv[1:]]),
                "rounds": args.rounds,
                "env": env,
                "env_of": dict(zip(names, args.config_env, strict=True)),
                "code_of": {n: str(c) for n, c in zip(names, args.config_code, strict=True)},
                "duration_s": args.duration,
                "runs": results,
                "summary": summary,
            },
            indent=1,
            default=str,
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
