"""Build the classifier's Grafana overview dashboard: monitoring/dashboards/classifier-overview.json.

The JSON is generated so that every panel follows the same conventions (templated datasource, the
namespace/cluster/application variables in every selector, fixed uid) and so tests can compare the
committed file with this source. Usage: ``python scripts/monitoring/overview_dashboard.py [--check]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "monitoring" / "dashboards" / "classifier-overview.json"
UID = "ray-serve-image-classifier"
SCHEMA_VERSION = 41  # Grafana 12
DS = {"type": "prometheus", "uid": "${datasource}"}

F = 'namespace=~"$namespace", ray_io_cluster=~"$cluster", application=~"$application"'
NODE = 'namespace=~"$namespace", ray_io_cluster=~"$cluster"'
POD = 'namespace=~"$namespace", pod=~"$cluster.*", container!="", container!="POD"'
RI = "$__rate_interval"
AVAILABILITY_BUDGET = 0.001  # 99.9 %
LATENCY_BUDGET = 0.01  # 99 % of requests under 500 ms


def quantiles(
    metric: str, qs=(0.5, 0.95, 0.99), by: str = "le", legend: str = "p{q}"
) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{F}}}[{RI}])))",
            legend.format(q=round(q * 100)),
        )
        for q in qs
    ]


# (title, type, unit, targets [(expr, legend)], width, height, description)
ROWS: list[tuple[str, list[tuple]]] = [
    (
        "Service level",
        [
            (
                "Availability error budget left (30 d, 99.9 %)",
                "stat",
                "percentunit",
                [
                    (
                        f"1 - max(classifier:slo_availability_errors:ratio_rate30d{{{F}}}) / {AVAILABILITY_BUDGET}",
                        "budget left",
                    )
                ],
                6,
                5,
                (
                    "Share of the 30-day error budget (0.1 % of requests may fail with 5xx) not yet spent. "
                    "From the recording rules in monitoring/prometheusrule.yaml."
                ),
            ),
            (
                "Latency error budget left (30 d, 99 % < 500 ms)",
                "stat",
                "percentunit",
                [
                    (
                        f"1 - max(classifier:slo_latency_slow:ratio_rate30d{{{F}}}) / {LATENCY_BUDGET}",
                        "budget left",
                    )
                ],
                6,
                5,
                "Share of the 30-day latency budget (1 % of requests may take over 500 ms) not yet spent.",
            ),
            (
                "Healthy replicas",
                "stat",
                "short",
                [(f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{F}}})", "{{deployment}}")],
                6,
                5,
                "Replicas passing Serve's health check, per deployment.",
            ),
            (
                "SLO burn rate (1 h)",
                "timeseries",
                "short",
                [
                    (
                        f"max by (namespace, ray_io_cluster) (classifier:slo_availability_errors:ratio_rate1h{{{F}}}) / {AVAILABILITY_BUDGET}",
                        "availability {{ray_io_cluster}}",
                    ),
                    (
                        f"max by (namespace, ray_io_cluster) (classifier:slo_latency_slow:ratio_rate1h{{{F}}}) / {LATENCY_BUDGET}",
                        "latency {{ray_io_cluster}}",
                    ),
                ],
                6,
                5,
                (
                    "How fast the error budgets burn: 1 = exactly on budget over 30 days; the fast-burn page fires "
                    "above 14.4 (1 h and 5 m windows)."
                ),
            ),
        ],
    ),
    (
        "Traffic and errors",
        [
            (
                "Request rate by route and status",
                "timeseries",
                "reqps",
                [
                    (
                        f"sum by (route, status_code) (rate(ray_serve_num_http_requests_total{{{F}}}[{RI}]))",
                        "{{route}} {{status_code}}",
                    )
                ],
                12,
                8,
                "HTTP requests answered by the Serve proxies.",
            ),
            (
                "Error ratio",
                "timeseries",
                "percentunit",
                [
                    (
                        (
                            f'(sum(rate(ray_serve_num_http_requests_total{{{F}, status_code=~"5.."}}[{RI}])) or vector(0))'
                            f" / sum(rate(ray_serve_num_http_requests_total{{{F}}}[{RI}]))"
                        ),
                        "5xx (counts against the SLO)",
                    ),
                    (
                        (
                            f'(sum(rate(ray_serve_num_http_requests_total{{{F}, status_code=~"4.."}}[{RI}])) or vector(0))'
                            f" / sum(rate(ray_serve_num_http_requests_total{{{F}}}[{RI}]))"
                        ),
                        "4xx (client errors)",
                    ),
                ],
                12,
                8,
                "Share of requests answered with an error status.",
            ),
            (
                "Rejected requests by error code",
                "timeseries",
                "reqps",
                [
                    (
                        f"sum by (status, code) (rate(ray_classifier_rejected_requests_total{{{F}}}[{RI}]))",
                        "{{status}} {{code}}",
                    )
                ],
                12,
                8,
                "Requests the application answered with an error, by HTTP status and the API's error code.",
            ),
            (
                "Images classified by outcome",
                "timeseries",
                "short",
                [(f"sum by (outcome) (rate(ray_classifier_images_total{{{F}}}[{RI}]))", "{{outcome}}")],
                12,
                8,
                "Images per second handled by the ingress: ok, or the error code that stopped them.",
            ),
        ],
    ),
    (
        "Latency",
        [
            (
                "HTTP latency",
                "timeseries",
                "ms",
                quantiles("ray_serve_http_request_latency_ms"),
                8,
                8,
                "End-to-end latency at the Serve proxy (all routes of the application).",
            ),
            (
                "Model latency per batch",
                "timeseries",
                "s",
                quantiles("ray_classifier_batch_inference_seconds")
                + quantiles("ray_classifier_image_inference_seconds", (0.99,), legend="per image p{q}"),
                8,
                8,
                "Forward-pass time of one batch on the model replicas, and the same divided by the batch size.",
            ),
            (
                "Decode and preprocessing latency",
                "timeseries",
                "s",
                quantiles("ray_classifier_decode_seconds"),
                8,
                8,
                "Time to decode, resize and crop one image on the ingress replicas.",
            ),
        ],
    ),
    (
        "Batching and queueing",
        [
            (
                "Batch size",
                "timeseries",
                "short",
                [
                    (
                        (
                            f"sum(rate(ray_classifier_model_images_total{{{F}}}[{RI}]))"
                            f" / sum(rate(ray_classifier_batch_size_count{{{F}}}[{RI}]))"
                        ),
                        "average",
                    ),
                    *quantiles("ray_classifier_batch_size", (0.95,)),
                ],
                8,
                8,
                (
                    "Images per model batch: average = images through the model / batches (both exact counts); "
                    "p95 from the histogram."
                ),
            ),
            (
                "Batch wait time",
                "timeseries",
                "s",
                quantiles("ray_classifier_batch_wait_seconds", (0.5, 0.95)),
                8,
                8,
                (
                    "How long the oldest image of each model batch waited for it to start: the queue "
                    "behind the running batch, or at most batch_wait_timeout_s when the model is idle."
                ),
            ),
            (
                "Queue length",
                "timeseries",
                "short",
                [
                    (
                        f"sum by (deployment) (ray_serve_deployment_queued_queries{{{F}}})",
                        "{{deployment}} waiting for a replica",
                    ),
                    (
                        f"sum by (deployment) (ray_classifier_batch_queue_images{{{F}}})",
                        "images waiting for a model batch",
                    ),
                    (
                        f"sum by (deployment) (ray_serve_replica_processing_queries{{{F}}})",
                        "{{deployment}} processing",
                    ),
                ],
                8,
                8,
                (
                    "Requests waiting in front of replicas, images waiting for a model batch, and "
                    "requests being processed."
                ),
            ),
            (
                "Request payload size",
                "timeseries",
                "bytes",
                quantiles("ray_classifier_request_bytes", (0.5, 0.95)),
                8,
                8,
                "Body size of prediction requests.",
            ),
            (
                "Images per second per model replica",
                "timeseries",
                "short",
                [(f"sum by (replica) (rate(ray_classifier_model_images_total{{{F}}}[{RI}]))", "{{replica}}")],
                8,
                8,
                "Images classified per second by each model replica.",
            ),
        ],
    ),
    (
        "Admission",
        [
            (
                "Expected wait against the admission limit",
                "timeseries",
                "s",
                [
                    (
                        f"max by (replica) (ray_classifier_admission_expected_wait_seconds{{{F}}})",
                        "{{replica}} expected wait",
                    ),
                    (
                        f"max by (replica) (ray_classifier_admission_wait_limit_seconds{{{F}}})",
                        "{{replica}} limit",
                    ),
                ],
                12,
                8,
                (
                    "Per ingress replica: how long a new request's images would wait behind those in "
                    "flight (images in flight / the learned saturated rate), and the longest wait it "
                    "admits (max_expected_wait_s, lowered under a deep overload to hold "
                    "latency_objective_s). Past the limit, requests get an immediate 503 with Retry-After."
                ),
            ),
            (
                "Images in flight and refused clients waiting",
                "timeseries",
                "short",
                [
                    (
                        f"sum by (replica) (ray_classifier_admission_images_in_flight{{{F}}})",
                        "{{replica}} images in flight",
                    ),
                    (
                        f"sum by (replica) (ray_classifier_admission_waiting_clients{{{F}}})",
                        "{{replica}} refused clients waiting",
                    ),
                ],
                12,
                8,
                (
                    "Per ingress replica: images admitted and not yet answered, and refused clients told "
                    "by Retry-After to come back later than now (a crowd of them is a deep overload)."
                ),
            ),
        ],
    ),
    (
        "Replicas and pods",
        [
            (
                "Target vs running replicas",
                "timeseries",
                "short",
                [
                    (
                        f"max by (deployment) (ray_serve_autoscaling_target_replicas{{{F}}})",
                        "{{deployment}} target",
                    ),
                    (
                        f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{F}}})",
                        "{{deployment}} healthy",
                    ),
                ],
                8,
                8,
                "Replicas Serve's autoscaler wants vs replicas that pass their health check.",
            ),
            (
                "Replica health",
                "state-timeline",
                "short",
                [
                    (
                        f"max by (deployment, replica) (ray_serve_deployment_replica_healthy{{{F}}})",
                        "{{deployment}} {{replica}}",
                    ),
                    (f"max by (replica) (ray_classifier_model_ready{{{F}}})", "model loaded {{replica}}"),
                ],
                8,
                8,
                "1 = healthy / model loaded and warmed up; 0 = not.",
            ),
            (
                "Pods per Ray group",
                "timeseries",
                "short",
                [
                    (
                        (
                            'count by (label_ray_io_group) (kube_pod_labels{namespace=~"$namespace", label_ray_io_cluster=~"$cluster", '
                            'label_ray_io_is_ray_node="yes"} and on (namespace, pod) (kube_pod_status_phase{phase="Running"} == 1))'
                        ),
                        "{{label_ray_io_group}} (running pods)",
                    ),
                    (
                        f"count by (ray_io_cluster) (ray_node_cpu_count{{{NODE}}})",
                        "Ray nodes reporting {{ray_io_cluster}}",
                    ),
                ],
                8,
                8,
                "Running pods of each Ray worker group (kube-state-metrics), and Ray nodes that export metrics.",
            ),
            (
                "CPU per pod",
                "timeseries",
                "short",
                [
                    (f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{POD}}}[{RI}]))", "{{pod}}"),
                    (
                        f"max by (pod, NodeAddress) (ray_node_cpu_utilization{{{NODE}}} * ray_node_cpu_count{{{NODE}}} / 100)",
                        "{{pod}} {{NodeAddress}} (Ray)",
                    ),
                ],
                12,
                8,
                "CPU cores used per pod (cAdvisor) and as Ray's node agent reports it.",
            ),
            (
                "Memory per pod",
                "timeseries",
                "bytes",
                [
                    (f"sum by (pod) (container_memory_working_set_bytes{{{POD}}})", "{{pod}}"),
                    (
                        f"max by (pod, NodeAddress) (ray_node_mem_used{{{NODE}}})",
                        "{{pod}} {{NodeAddress}} (Ray)",
                    ),
                ],
                12,
                8,
                "Working-set memory per pod (cAdvisor, what the OOM killer sees) and Ray's node memory use.",
            ),
        ],
    ),
]


def variable(name: str, label: str, query: str, default: str | None = None) -> dict:
    current = (
        {"selected": True, "text": default, "value": default}
        if default
        else {"selected": True, "text": ["All"], "value": ["$__all"]}
    )
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "sort": 1,
        "current": current,
        "hide": 0,
        "options": [],
        "regex": "",
        "skipUrlSync": False,
    }


def panel(
    pid: int, title: str, kind: str, unit: str, targets, x: int, y: int, w: int, h: int, desc: str
) -> dict:
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                "range": True,
                "editorMode": "code",
            }
            for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        p["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
        }
    elif kind == "stat":
        p["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
        if unit == "percentunit":
            p["fieldConfig"]["defaults"]["thresholds"] = {
                "mode": "absolute",
                "steps": [
                    {"color": "red", "value": None},
                    {"color": "orange", "value": 0.25},
                    {"color": "green", "value": 0.5},
                ],
            }
    elif kind == "state-timeline":
        p["options"] = {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9}
        p["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
        }
    return p


def build() -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for title, kind, unit, targets, w, h, desc in row_panels:
            if x + w > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(panel(pid, title, kind, unit, targets, x, y, w, h, desc))
            pid, x, row_h = pid + 1, x + w, max(row_h, h)
        y += row_h
    sel = "ray_serve_deployment_replica_healthy"
    return {
        "uid": UID,
        "title": "Image classifier / Overview",
        "description": "Ray Serve image classifier: traffic, errors, latency, batching, queueing, replicas, "
        "pods and SLO budgets. Generated by scripts/monitoring/overview_dashboard.py.",
        "tags": ["ray-serve", "image-classifier", "slo"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": []},
        "links": [
            {"title": "Ray Serve", "type": "link", "url": "/d/rayServeDashboard", "targetBlank": False},
            {"title": "Ray Serve deployments", "type": "link", "url": "/d/rayServeDeploymentDashboard"},
        ],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                    "skipUrlSync": False,
                },
                variable("namespace", "Namespace", f"label_values({sel}, namespace)"),
                variable(
                    "cluster",
                    "Ray cluster",
                    f'label_values({sel}{{namespace=~"$namespace"}}, ray_io_cluster)',
                ),
                variable(
                    "application",
                    "Serve application",
                    f'label_values({sel}{{namespace=~"$namespace", ray_io_cluster=~"$cluster"}}, application)',
                    default="classifier",
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(
                f"{OUT.relative_to(REPO)} is stale; run {Path(__file__).relative_to(REPO)}", file=sys.stderr
            )
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
