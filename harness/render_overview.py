"""Draw the overview dashboard's main panels to a PNG from real Prometheus data (query_range + matplotlib).

No Grafana runs here, so this is how the docs get a picture of the dashboard. Two ways to run it:

  # against any Prometheus that scrapes the app
  python -m harness.render_overview --prometheus http://127.0.0.1:9090 --minutes 15
  # self-contained: a local Ray cluster serving the app, a local Prometheus, bounded load, then the PNG
  python -m harness.render_overview --demo --load-seconds 120

Output: docs/img/classifier-overview.png (or --out).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from harness.promstack import (
    LOCAL_LABELS,
    REPO,
    Prometheus,
    dashboard,
    drive_load,
    is_cluster_only,
    panels,
    substitute,
)

OUT = REPO / "docs" / "img" / "classifier-overview.png"
SCALE = {"percentunit": (100, "%"), "s": (1000, "ms"), "ms": (1, "ms"), "reqps": (1, "req/s")}


def _scale(unit: str, peak: float) -> tuple[float, str]:
    if unit == "bytes":
        for factor, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if peak >= factor:
                return 1 / factor, name
        return 1, "bytes"
    return SCALE.get(unit, (1, ""))


def render(
    prom_url: str, out: Path, start: float, end: float, variables: dict[str, str], columns: int = 3
) -> list[str]:
    """Query every time-series panel's non-cluster-only targets over [start, end] and draw those with data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import requests

    step = max(1.0, (end - start) / 240)
    rate_interval = f"{max(15, int(step * 4))}s"
    drawn: list[tuple[dict, list]] = []
    for panel in panels(dashboard()):
        if panel["type"] != "timeseries":
            continue
        lines = []
        for target in panel["targets"]:
            if is_cluster_only(target["expr"]):
                continue
            query = substitute(target["expr"], variables, rate_interval=rate_interval)
            body = requests.get(
                f"{prom_url}/api/v1/query_range",
                timeout=60,
                params={"query": query, "start": start, "end": end, "step": step},
            ).json()
            if body.get("status") != "success":
                raise ValueError(f"{panel['title']}: {body.get('error')}")
            for series in body["data"]["result"]:
                legend = target.get("legendFormat") or query
                for key, value in series["metric"].items():
                    legend = legend.replace("{{" + key + "}}", value)
                legend = re.sub(r"\{\{\w+\}\}", "", legend).strip()
                points = [(float(t), float(v)) for t, v in series["values"] if math.isfinite(float(v))]
                if points:
                    lines.append((legend, points))
        if lines:
            drawn.append((panel, lines))
    if not drawn:
        raise RuntimeError("no panel had data; is the Prometheus scraping the app?")
    rows = math.ceil(len(drawn) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(drawn) :]:
        ax.axis("off")
    for ax, (panel, lines) in zip(axes.flat, drawn, strict=False):  # more axes than panels
        peak = max(abs(v) for _, points in lines for _, v in points)
        factor, unit = _scale(panel["fieldConfig"]["defaults"].get("unit", ""), peak)
        for legend, points in lines[:8]:
            ax.plot(
                [datetime.fromtimestamp(t) for t, _ in points],
                [v * factor for _, v in points],
                label=legend[:40],
                linewidth=1.2,
            )
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M:%S"))
    fig.suptitle(f"{dashboard()['title']}  (rendered from Prometheus by {Path(__file__).name})", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return [panel["title"] for panel, _ in drawn]


def demo(load_seconds: float, out: Path) -> list[str]:
    """Local Ray cluster + Prometheus + bounded load on 127.0.0.1, then render; everything stopped by pid."""
    from harness.images import CAT_PHOTO, COFFEE_PHOTO, HOPPER_PHOTO
    from harness.ray_cluster import RayCluster, load_serve_config

    images = [p.read_bytes() for p in (CAT_PHOTO, COFFEE_PHOTO, HOPPER_PHOTO)]
    with RayCluster() as cluster:
        cluster.deploy(load_serve_config())
        with Prometheus(targets={"ray-head-metrics": [f"127.0.0.1:{cluster.metrics_port}"]}) as prom:
            start = time.time()
            while time.time() - start < load_seconds:
                drive_load(cluster.serve_url, images, rounds=15, bad_every=5)
                time.sleep(1)
            time.sleep(25)  # Ray exports application metrics every ~10 s
            variables = {
                "namespace": LOCAL_LABELS["namespace"],
                "cluster": LOCAL_LABELS["ray_io_cluster"],
                "application": "classifier",
            }
            return render(prom.url, out, start - 20, time.time(), variables)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", help="URL of a Prometheus that scrapes the app")
    parser.add_argument("--minutes", type=float, default=15, help="time range to draw (with --prometheus)")
    parser.add_argument("--namespace", default=".*")
    parser.add_argument("--cluster", default=".*")
    parser.add_argument("--application", default="classifier")
    parser.add_argument("--demo", action="store_true", help="start a local cluster + Prometheus + load")
    parser.add_argument("--load-seconds", type=float, default=120)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.demo:
        drawn = demo(args.load_seconds, args.out)
    elif args.prometheus:
        end = time.time()
        drawn = render(
            args.prometheus,
            args.out,
            end - args.minutes * 60,
            end,
            {"namespace": args.namespace, "cluster": args.cluster, "application": args.application},
        )
    else:
        parser.error("give --prometheus URL or --demo")
    print(f"wrote {args.out} with {len(drawn)} panels: {', '.join(drawn)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
