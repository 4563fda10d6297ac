"""Export Ray's own Grafana dashboards from the installed Ray into monitoring/dashboards/.

The JSON comes from Ray's dashboard factories (ray.dashboard.modules.metrics.grafana_dashboard_factory), the
same code the Ray head runs to write them into its session dir, so the panels match the pinned Ray version.
Their uids (rayDefaultDashboard, rayServeDashboard, rayServeDeploymentDashboard) are the ones the Ray
dashboard embeds. Usage: ``python scripts/monitoring/export_ray_dashboards.py [--check]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "monitoring" / "dashboards"
# output file -> factory function name
DASHBOARDS = {
    "ray-default.json": "generate_default_grafana_dashboard",
    "ray-serve.json": "generate_serve_grafana_dashboard",
    "ray-serve-deployment.json": "generate_serve_deployment_grafana_dashboard",
}


def render() -> dict[str, str]:
    """File name -> dashboard JSON text, without any RAY_GRAFANA_* overrides from the environment."""
    for key in [k for k in os.environ if k.startswith("RAY_GRAFANA_")]:
        del os.environ[key]
    from ray.dashboard.modules.metrics import grafana_dashboard_factory as factory

    rendered = {}
    for name, func in DASHBOARDS.items():
        content, _uid = getattr(factory, func)()
        # Compact: the default dashboard is ~220 kB indented, too close to the 256 kB limit on the
        # last-applied annotation that `kubectl apply` writes.
        rendered[name] = json.dumps(json.loads(content), separators=(",", ":"), sort_keys=True) + "\n"
    return rendered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    args = parser.parse_args()
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)} ({len(text)} bytes)")
    if stale:
        print(f"stale: {stale}; run {Path(__file__).relative_to(REPO)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
