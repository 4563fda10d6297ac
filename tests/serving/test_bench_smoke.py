"""The serving benchmark's smoke mode end to end against the session's real Ray cluster.

Seconds, not minutes, and no assertion on any timing: it checks that every measurement is made and
the JSON, table and plot are well-formed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def test_bench_smoke_measures_every_figure(ray_cluster, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.serving",
            "--smoke",
            "--url",
            ray_cluster.serve_url,
            "--temp-dir",
            ray_cluster.temp_dir,
            "--out",
            str(tmp_path),
            "--label",
            "smoke",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())

    # (a) the pipeline limit, for both image sizes, over the batch-size sweep
    for size in ("small", "phone"):
        limit = result["pipeline"][size]
        assert limit["processes"] == 2 and limit["threads_per_process"] == 1
        assert limit["images_per_s"] > 0
        assert limit["best_batch_size"] in {int(b) for b in limit["by_batch_size"]}
    # (b) served throughput and latency per concurrency, errors counted, client CPU measured
    levels = result["summary"]["levels"]
    assert [lv["concurrency"] for lv in levels] == result["concurrency"]
    for run in result["served"] + result["served_12mp"]:
        assert run["completed"] > 0 and run["errors"] == {}
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        assert run["client_cpu_cores"] > 0
        assert run["server_cpu_cores"]["model replica"] > 0
    # (c) the ratio and (d) the 12 MP comparison
    assert result["summary"]["ratio_at_reference"] > 0
    assert result["summary"]["ratio_12mp_to_small"] > 0
    # the server's CPU per served image, by process role
    by_role = result["summary"]["cpu_ms_per_image_by_role"]
    assert by_role["model replica"] > 0 and by_role["ingress replica"] > 0
    assert by_role["total"] >= by_role["model replica"] + by_role["ingress replica"]
    # (f) the overload level: clients that honour Retry-After, every answer a 200 or a 503 with it
    for run in result["overload"]:
        assert run["honor_retry_after"] and run["completed"] > 0 and run["errors"] == {}
        assert run["shed_with_retry_after"] == run["shed"]
    assert {row["target"].split(" ")[0] for row in result["summary"]["targets"]} >= {"served", "overload"}
    # (e) memory of each replica and the idle CPU of the cluster
    roles = [row["role"] for row in result["rss"]]
    assert roles.count("model replica") == 2 and roles.count("ingress replica") == 1
    assert all(row["rss_mib"] > 0 for row in result["rss"])
    assert result["idle_cpu_cores"]["total"] >= 0
    # the table and the plot
    assert (
        "pipeline limit" in proc.stdout and "served/limit" in proc.stdout and "== targets ==" in proc.stdout
    )
    with Image.open(tmp_path / "smoke.png") as png:
        assert png.format == "PNG" and png.width > 500
