"""Measure the resident memory of each Serve replica and Ray process of the classifier, to size pods.

Starts a real single-node Ray cluster (harness/ray_cluster.py, the way KubeRay starts a head), deploys the
repo's serve_config.yaml, sends a few predictions so the model is warm, and prints RSS/USS per process
role. Run it under the shared lock: `flock /tmp/heavy.lock .venv/bin/python scripts/k8s/measure_replica_memory.py`.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import psutil
import requests
import skimage

from harness.ray_cluster import RayCluster, load_serve_config

REPO = Path(__file__).resolve().parents[2]

MiB = 1024 * 1024


def role(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    for marker in (
        "ServeReplica:classifier:ImageClassifier",
        "ServeReplica:classifier:ImageIngress",
        "ServeController",
        "ProxyActor",
        "gcs_server",
        "raylet",
        "dashboard.py",
        "agent",
        "log_monitor",
        "monitor.py",
    ):
        if marker in cmd:
            return marker
    return "other:" + (proc.name() or "?")


def main() -> None:
    cat = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
    with RayCluster() as cluster:
        cluster.deploy(load_serve_config())
        for _ in range(20):  # warm: batches, torchscript, allocator pools
            requests.post(
                f"{cluster.serve_url}/predict", files={"file": ("cat.png", cat, "image/png")}, timeout=30
            ).raise_for_status()
        time.sleep(2)
        per_role: dict[str, list[dict]] = defaultdict(list)
        for proc in cluster.processes():
            try:
                mem = proc.memory_full_info()
                per_role[role(proc)].append(
                    {"pid": proc.pid, "rss_mib": round(mem.rss / MiB, 1), "uss_mib": round(mem.uss / MiB, 1)}
                )
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        total_rss = sum(p["rss_mib"] for procs in per_role.values() for p in procs)
        total_uss = sum(p["uss_mib"] for procs in per_role.values() for p in procs)
    print(
        json.dumps(
            {
                "per_role": per_role,
                "total_rss_mib": round(total_rss, 1),
                "total_uss_mib": round(total_uss, 1),
                "cpu_count": psutil.cpu_count(),
                "machine_mem_gib": round(psutil.virtual_memory().total / 1024**3, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
