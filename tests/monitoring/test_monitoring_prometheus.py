"""A real Prometheus scraping the real app under bounded load: every overview-dashboard query and every
rule expression returns data, and the custom metrics agree with the traffic the test sent.

Queries on series that only exist in a Kubernetes cluster (cAdvisor, kube-state-metrics, the KubeRay
operator) are listed below and only checked for syntax. Runtime: ~60-90 s (plus the shared Ray cluster).
"""

from __future__ import annotations

import math
import re
import threading
import time

import pytest
import requests

from harness import promstack
from harness.promstack import (
    LOCAL_LABELS,
    Prometheus,
    boolify,
    drive_load,
    is_cluster_only,
    panels,
    substitute,
)

VARIABLES = {
    "namespace": LOCAL_LABELS["namespace"],
    "cluster": LOCAL_LABELS["ray_io_cluster"],
    "application": "classifier",
    "datasource": "Prometheus",
}
SEL = 'namespace="classifier-test", application="classifier"'

# Cluster-only queries, checked for syntax only: (panel title, refId) and alert names.
CLUSTER_ONLY_TARGETS = {("Pods per Ray group", "A"), ("CPU per pod", "A"), ("Memory per pod", "A")}
CLUSTER_ONLY_ALERTS = {
    "ClassifierRayServiceNotReady",
    "ClassifierPodCrashLooping",
    "ClassifierRayPodsCrashing",
    "ClassifierPodOOMKilled",
}

# Raw counters whose increase during the test must equal what the test sent.
COUNTERS = {
    "images_ok": f'sum(ray_classifier_images_total{{{SEL}, outcome="ok"}})',
    "images_invalid": f'sum(ray_classifier_images_total{{{SEL}, outcome="invalid_image"}})',
    "rejected_invalid": f'sum(ray_classifier_rejected_requests_total{{{SEL}, status="400", code="invalid_image"}})',
    "rejected_not_found": f'sum(ray_classifier_rejected_requests_total{{{SEL}, status="404", code="not_found"}})',
    "http_200": f'sum(ray_serve_num_http_requests_total{{{SEL}, status_code="200"}})',
    "http_400": f'sum(ray_serve_num_http_requests_total{{{SEL}, status_code="400"}})',
    "http_404": f'sum(ray_serve_num_http_requests_total{{{SEL}, status_code="404"}})',
    "http_latency_count": f"sum(ray_serve_http_request_latency_ms_count{{{SEL}}})",
    "decode_count": f"sum(ray_classifier_decode_seconds_count{{{SEL}}})",
    "request_bytes_count": f"sum(ray_classifier_request_bytes_count{{{SEL}}})",
    "batch_size_count": f"sum(ray_classifier_batch_size_count{{{SEL}}})",
    "batch_seconds_count": f"sum(ray_classifier_batch_inference_seconds_count{{{SEL}}})",
    "batch_wait_count": f"sum(ray_classifier_batch_wait_seconds_count{{{SEL}}})",
    "groups_processed": f'sum(ray_serve_batches_processed_total{{{SEL}, deployment="ImageIngress"}})',
    "model_images": f"sum(ray_classifier_model_images_total{{{SEL}}})",
}


def read_counters(prom: Prometheus) -> dict[str, float]:
    # max_over_time per series: Ray may stop exporting an idle series for a while; its last value counts.
    return {
        name: prom.value(re.sub(r"^sum\((.*)\)$", r"sum(max_over_time(\1[15m]))", expr), default=0.0)
        for name, expr in COUNTERS.items()
    }


def head_metrics_ports(cluster) -> dict[str, list[str]]:
    """The head's autoscaler and dashboard metrics endpoints (the PodMonitor's as-metrics/dash-metrics
    ports), found on this cluster's own processes rather than assumed (44217/44227 by default)."""
    jobs = {
        "ray-head-autoscaler": "autoscaler/_private/monitor.py",
        "ray-head-dashboard": "dashboard/dashboard.py",
    }
    found: dict[str, list[str]] = {}
    for proc in cluster.processes():
        cmdline = " ".join(proc.cmdline())
        for job, script in jobs.items():
            if script in cmdline:
                ports = {c.laddr.port for c in proc.net_connections("tcp") if c.status == "LISTEN"}
                ports -= {cluster.dashboard_port, cluster.metrics_port}
                for port in sorted(ports):
                    try:
                        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                    except requests.RequestException:
                        continue
                    if "# TYPE" in body:
                        found[job] = [f"127.0.0.1:{port}"]
    assert set(found) == set(jobs), f"head metrics endpoints not found: {found}"
    return found


@pytest.fixture(scope="module")
def loaded(ray_cluster, cat_png, coffee_png, hopper_jpg):
    """Prometheus scraping the shared cluster's metrics port, before/after counters around a bounded load."""
    prom = Prometheus(
        targets={
            "ray-head-metrics": [f"127.0.0.1:{ray_cluster.metrics_port}"],
            **head_metrics_ports(ray_cluster),
        }
    )
    with prom:
        prom.wait_for('up{job="ray-head-metrics"}', lambda v: v == 1, 30, "scrape of the Ray metrics port")
        images = [cat_png, coffee_png, hopper_jpg]
        # Every series must exist before the measured load: a new counter's first sample already holds
        # all increments up to Ray's export, and rate() cannot see those.
        drive_load(ray_cluster.serve_url, images, rounds=3, bad_every=1)
        # This and earlier tests' increments may still be on their way through Ray's metrics agent
        # (exported every ~10 s): start from counters that have stopped moving.
        before, stable_since = read_counters(prom), time.monotonic()
        deadline = time.monotonic() + 90
        while time.monotonic() - stable_since < 12:
            assert time.monotonic() < deadline, "Ray's metrics never settled"
            time.sleep(2)
            now = read_counters(prom)
            if now != before:
                before, stable_since = now, time.monotonic()
        started = time.time()
        sent = drive_load(ray_cluster.serve_url, images, rounds=30, bad_every=5)
        expected = {
            "images_ok": sent["ok_images"],
            "images_invalid": sent["invalid_image"],
            "rejected_invalid": sent["invalid_image"],
            "rejected_not_found": sent["not_found"],
            "http_200": sent["statuses"].get("200", 0),
            "http_400": sent["statuses"].get("400", 0),
            "http_404": sent["statuses"].get("404", 0),
            "http_latency_count": sum(sent["statuses"].values()),
            "decode_count": sent["ok_images"],
            "request_bytes_count": sent["ok_requests"] + sent["invalid_image"],
        }
        # Wait until every increment made it through Ray's export into Prometheus.
        # Stop early once every count matches, or once nothing has moved for 20 s (a count that is wrong
        # then stays wrong; the test below reports it).
        deadline, delta, last, moved = time.monotonic() + 60, {}, None, time.monotonic()
        while time.monotonic() < deadline:
            after = read_counters(prom)
            delta = {k: after[k] - before[k] for k in after}
            # The model replicas export on their own schedule: wait for their count too.
            if (
                all(delta[k] == v for k, v in expected.items())
                and delta["groups_processed"] > 0
                and delta["batch_wait_count"] == delta["batch_size_count"]
                and delta["model_images"] == sent["ok_images"]
            ):
                break
            if after != last:
                last, moved = after, time.monotonic()
            elif time.monotonic() - moved > 20:
                break
            time.sleep(2)
        # From here on a trickle of traffic, as in production: Ray stops exporting a gauge ~30 s after its
        # last update (observed with 2.60), so an idle app loses its queue and batch gauges.
        stop = threading.Event()
        trickle = threading.Thread(target=_trickle, args=(ray_cluster.serve_url, cat_png, stop), daemon=True)
        trickle.start()
        try:
            # Rules evaluate every 2 s; give them and Ray's next export time to see the new data.
            prom.wait_for(
                f"count(classifier:slo_availability_errors:ratio_rate5m{{{SEL}}})",
                lambda v: v >= 1,
                30,
                "SLO recording rules",
            )
            time.sleep(12)
            yield {"prom": prom, "sent": sent, "expected": expected, "delta": delta, "start": started}
        finally:
            stop.set()
            trickle.join(timeout=30)


def _trickle(base_url: str, image: bytes, stop: threading.Event) -> None:
    with requests.Session() as http:
        while not stop.wait(0.5):
            try:
                http.post(
                    f"{base_url}/predict", data=image, headers={"content-type": "image/png"}, timeout=30
                )
            except requests.RequestException:
                pass


def test_custom_metrics_agree_with_the_traffic_sent(loaded):
    delta, expected, sent = loaded["delta"], loaded["expected"], loaded["sent"]
    assert sent["ok_images"] > 0 and sent["invalid_image"] > 0
    for name, value in expected.items():
        assert delta[name] == value, f"{name}: metrics say {delta[name]}, the test sent {value} ({delta})"
    # Every classified image went through the model exactly once, in batches of 1..max_batch_size.
    assert delta["model_images"] == sent["ok_images"]
    assert delta["batch_size_count"] == delta["batch_seconds_count"] == delta["batch_wait_count"] > 0
    assert 1 <= delta["model_images"] / delta["batch_size_count"] <= 16  # max_batch_size in serve_config.yaml
    # Serve's own batch counter counts the ingress's groups (@serve.batch), at most one per image.
    assert 0 < delta["groups_processed"] <= sent["ok_images"]


def test_model_ready_gauge_reports_every_replica(loaded):
    prom = loaded["prom"]
    ready = prom.query(f'ray_classifier_model_ready{{{SEL}, deployment="ImageClassifier"}}')
    assert len({r["metric"]["replica"] for r in ready}) == 2  # num_replicas in serve_config.yaml
    assert all(float(r["value"][1]) == 1 for r in ready)


def _overview_targets():
    dash = promstack.dashboard()
    return [(p["title"], t["refId"], t["expr"]) for p in panels(dash) for t in p["targets"]]


def test_cluster_only_list_is_exact():
    derived = {(title, ref) for title, ref, expr in _overview_targets() if is_cluster_only(expr)}
    assert derived == CLUSTER_ONLY_TARGETS
    alerts = {
        r["alert"]: r["expr"] for g in promstack.rule_groups()["groups"] for r in g["rules"] if "alert" in r
    }
    assert {name for name, expr in alerts.items() if is_cluster_only(expr)} == CLUSTER_ONLY_ALERTS


@pytest.mark.parametrize("title,ref,expr", _overview_targets(), ids=lambda v: v if isinstance(v, str) else "")
def test_overview_panel_query_returns_data(loaded, title, ref, expr):
    prom = loaded["prom"]
    # Rates over a window that covers the whole load (Grafana's $__rate_interval depends on the panel width).
    query = substitute(expr, VARIABLES, rate_interval=f"{int(time.time() - loaded['start']) + 15}s")
    result = prom.query(query)  # raises on a syntax error
    if (title, ref) in CLUSTER_ONLY_TARGETS:
        return
    assert result, f"{title} [{ref}] returned no data: {query}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"{title} [{ref}] only NaN/Inf: {values}"


def test_overview_variables_resolve(loaded):
    prom = loaded["prom"]
    dash = promstack.dashboard()
    expected = {
        "namespace": VARIABLES["namespace"],
        "cluster": VARIABLES["cluster"],
        "application": "classifier",
    }
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"]["query"])
        assert m, var["query"]
        selector = substitute(
            m.group(1), {"namespace": VARIABLES["namespace"], "cluster": VARIABLES["cluster"]}
        )
        values = prom.api(f"label/{m.group(2)}/values", **{"match[]": selector})
        assert expected[var["name"]] in values, (var["name"], values)


def test_every_rule_is_healthy_and_returns_data(loaded):
    prom = loaded["prom"]
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in promstack.rule_groups()["groups"])
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        if rule["type"] == "recording":
            assert prom.query(f"{rule['name']}{{{SEL}}}"), f"recording rule {rule['name']} has no data"
    # Nothing fires on a healthy app under light load.
    active = [a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]]
    assert active == [], active


def _alerts():
    return [
        (r["alert"], r["expr"]) for g in promstack.rule_groups()["groups"] for r in g["rules"] if "alert" in r
    ]


@pytest.mark.parametrize(
    "name,expr", _alerts(), ids=lambda v: v if isinstance(v, str) and v.startswith("C") else ""
)
def test_alert_expression_evaluates_on_real_series(loaded, name, expr):
    """With every comparison in its `bool` form the alert's expression returns its whole input: it
    must have data here, and every value must be 0 (would not fire) on the healthy app."""
    prom = loaded["prom"]
    absent = re.fullmatch(r"\s*absent\((.*)\)\s*", expr, re.DOTALL)
    if absent:
        assert prom.query(absent.group(1)), f"{name}: the series it watches are missing"
        assert prom.query(expr) == [], f"{name} would fire"
        return
    result = prom.query(boolify(expr))  # raises on a syntax error
    if name in CLUSTER_ONLY_ALERTS:
        return
    assert result, f"{name}: no data for {boolify(expr)}"
    assert all(float(r["value"][1]) == 0 for r in result), f"{name} would fire: {result}"


def test_ray_dashboards_queries_parse(loaded):
    """Ray's exported dashboards: every query is valid PromQL for this Prometheus (syntax only: many
    panels cover Ray features this app does not use)."""
    prom = loaded["prom"]
    checked = 0
    for name in ("ray-serve.json", "ray-serve-deployment.json", "ray-default.json"):
        for p in panels(promstack.dashboard(name)):
            for t in p.get("targets", []):
                expr = re.sub(r"\$\{?\w+\}?", ".*", substitute(t["expr"], {}, rate_interval="2m"))
                try:
                    prom.query(expr)
                except ValueError as exc:
                    pytest.fail(f"{name} / {p['title']}: {exc}")
                checked += 1
    assert checked > 50


def test_render_overview_png(loaded, tmp_path):
    """The docs renderer draws the main panels from this Prometheus' data."""
    from harness import render_overview

    out = tmp_path / "overview.png"
    drawn = render_overview.render(
        loaded["prom"].url, out, start=loaded["start"] - 30, end=time.time(), variables=VARIABLES
    )
    assert out.stat().st_size > 10_000
    assert len(drawn) >= 8
    assert requests.get(f"{loaded['prom'].url}/-/healthy", timeout=5).ok
