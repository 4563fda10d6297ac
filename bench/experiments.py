"""Run the recorded serving experiments back to back, sharing clusters where the config allows.

    python -m bench.experiments [--out artifacts/bench] [--duration 10] [--only NAME ...]

Each experiment is ``bench.serving --url`` against a cluster started here with one Serve config from
``bench/configs/`` (or the default) deployed; experiments that differ only in the Serve config share a
cluster (redeployed between them, as KubeRay would), those needing another cluster environment (e.g.
``RAY_SERVE_ENABLE_HA_PROXY=1``) get their own. Also runs the Locust steady shape against the default
config. Results land in ``--out`` as ``exp-<name>.json/.png/.log``; docs/PERFORMANCE.md records them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from harness.ray_cluster import RayCluster, load_serve_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bench" / "configs"

# (cluster env, [(name, config path or None for serve_config.yaml, extra bench.serving args)])
PLAN = [
    (
        {},
        [
            ("default-profiled", None, ["--profile"]),
            ("batch4", CONFIGS / "batch4-wait1ms.yaml", []),
            ("batch8", CONFIGS / "batch8-wait2ms.yaml", []),
            ("batch32", CONFIGS / "batch32-wait20ms.yaml", []),
            ("locust-steady", None, None),
        ],
    ),
    # Its own cluster: on a node whose 2 CPUs are all allocated, a change of ray_actor_options
    # cannot roll out in place (the new replica needs CPUs before the old one gives them back).
    ({}, [("ingress2", CONFIGS / "ingress-2replicas.yaml", [])]),
    ({"RAY_SERVE_ENABLE_HA_PROXY": "1"}, [("ha-proxy", None, [])]),
    ({}, [("1x2threads", CONFIGS / "model-1x2threads.yaml", ["--with-pipeline"])]),
    # A/B/A/B on one cluster: the machine's speed drifts over minutes (shared host), so a variant
    # is only compared with the default measured right beside it.
    (
        {},
        [
            ("ab-default-1", None, []),
            ("ab-batch4-1", CONFIGS / "batch4-wait1ms.yaml", []),
            ("ab-default-2", None, []),
            ("ab-batch4-2", CONFIGS / "batch4-wait1ms.yaml", []),
            ("ab-default-3", None, []),
            ("ab-batch32-3", CONFIGS / "batch32-wait20ms.yaml", []),
        ],
    ),
]
AB_ONLY = {name for _, runs in PLAN[-1:] for name, _, _ in runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--order", choices=("plan", "ab-first"), default="plan")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    plan = PLAN[-1:] + PLAN[:-1] if args.order == "ab-first" else PLAN
    for cluster_env, runs in plan:
        runs = [r for r in runs if (r[0] in args.only if args.only else r[0] not in AB_ONLY)]
        if not runs:
            continue
        with RayCluster(env=cluster_env) as cluster:
            for name, config_path, extra in runs:
                config = load_serve_config(config_path) if config_path else load_serve_config()
                print(f"== {name} (env {cluster_env})", flush=True)
                try:
                    cluster.deploy(config)
                except (TimeoutError, RuntimeError) as exc:
                    print(f"   deploy failed, skipped: {exc}", flush=True)
                    continue
                log = (args.out / f"exp-{name}.log").open("w")
                if extra is None:  # the Locust suite, steady closed loop, against this config
                    cmd = [
                        sys.executable,
                        "-m",
                        "loadtest.run",
                        "--host",
                        cluster.serve_url,
                        "--shape",
                        "steady",
                        "--users",
                        "8",
                        "--duration",
                        "60",
                        "--out",
                        str(args.out / f"exp-{name}"),
                    ]
                else:
                    cmd = [
                        sys.executable,
                        "-m",
                        "bench.serving",
                        "--url",
                        cluster.serve_url,
                        "--temp-dir",
                        cluster.temp_dir,
                        "--config",
                        str(config_path or REPO / "serve_config.yaml"),
                        "--skip-12mp",
                        "--concurrency",
                        "8",
                        "32",
                        "--duration",
                        str(args.duration),
                        "--out",
                        str(args.out),
                        "--label",
                        f"exp-{name}",
                    ]
                    if "--with-pipeline" in extra:
                        extra = [e for e in extra if e != "--with-pipeline"]
                    else:
                        cmd.append("--skip-pipeline")
                    cmd += [*extra, "--env-note", ",".join(f"{k}={v}" for k, v in cluster_env.items())]
                rc = subprocess.run(
                    cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600
                ).returncode
                print(f"   exit {rc}; log {log.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
