"""`make demo`: the chart on the real test cluster, under load, through autoscaling, an update and a pod loss.

    python -m bench.cluster_demo [--out artifacts/demo] [--steady-clients 1] [--spike-factor 10]
                                 [--docs]   # also copy the pictures to docs/img/

Needs the test cluster (`make cluster`) and root (Prometheus runs in the node's network namespace).
Mode `deployment` with helm-values/app-deployment-local.yaml (3-4 pods on the one 2-CPU node). All
traffic goes from 127.0.0.1 through a port-forward to an HAProxy gateway pod in front of the Service,
so kube-proxy spreads it over the pods as an ingress controller's traffic is spread. Phases:

1. deploy: helm install, every pod Ready;
2. steady load (closed loop, --steady-clients): requests per pod and per model replica;
3. a spike of --spike-factor x the clients: the HPA's decision (CPU from metrics-server), the new pod's
   scheduling, Ready, and first request served (from its own metrics), against "responds within 2 min";
4. rolling update 0.1.0 -> 0.1.1 (maxSurge 1, maxUnavailable 0) under steady load: failed requests;
5. a serving pod deleted under steady load: failed requests, the longest wait between two answers,
   and the time until the replacement pod is Ready (full capacity);
6. load stopped: the HPA's scale-down after its stabilisation window;
7. pictures: the overview dashboard drawn from the cluster's Prometheus (PodMonitor selection), and
   the demo's own timeline (pods, HPA, throughput, failures).

Prints a timeline as it goes; writes timeline.txt, demo.json and the PNGs to --out; removes its
namespace, the gateway and Prometheus afterwards, also when interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import skimage

from harness import kubetest as kt
from harness.cluster_prometheus import ClusterPrometheus
from harness.promstack import dashboard, is_cluster_only, panels, substitute
from harness.render_overview import render

REPO = kt.REPO

RELEASE = "classifier"
NAME = "classifier-ray-serve-image-classifier"
VALUES = "helm-values/app-deployment-local.yaml"
METRICS_PORT = 8080
SERVE_SELECTOR = "app.kubernetes.io/component=serve"


def iso(ts: str | None) -> float | None:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else None


@dataclass
class Timeline:
    """What happened when (wall clock), printed as it is recorded."""

    start: float = field(default_factory=time.time)
    events: list = field(default_factory=list)
    phases: list = field(default_factory=list)  # (name, start, end)

    def mark(self, what: str, at: float | None = None, **figures) -> float:
        at = time.time() if at is None else at
        self.events.append({"t": at, "what": what, **figures})
        extra = ", ".join(f"{k}={v}" for k, v in figures.items())
        print(f"[{at - self.start:7.1f} s] {what}" + (f" ({extra})" if extra else ""), flush=True)
        return at

    def text(self) -> str:
        return "\n".join(
            f"{e['t'] - self.start:7.1f} s  {e['what']}  "
            + ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "what"))
            for e in sorted(self.events, key=lambda e: e["t"])
        )


class Sampler(threading.Thread):
    """Every 2 s: pods (Ready / not), the Deployment's desired replicas, the HPA's CPU reading."""

    def __init__(self, ns: str):
        super().__init__(daemon=True)
        self.ns, self.samples, self._halt = ns, [], threading.Event()

    def run(self) -> None:
        while not self._halt.wait(2):
            try:
                pods = list(serve_pods(self.ns).values())
                deploy = kt.get("deployment", NAME, self.ns)
                hpa = kt.get("hpa", NAME, self.ns, missing_ok=True) or {}
            except (AssertionError, OSError, ValueError):
                continue
            cpu = None
            for metric in (hpa.get("status") or {}).get("currentMetrics") or []:
                cpu = ((metric.get("resource") or {}).get("current") or {}).get("averageUtilization", cpu)
            self.samples.append(
                {
                    "t": time.time(),
                    "pods": len(pods),
                    "ready": sum(map(ready, pods)),
                    "desired": deploy["spec"]["replicas"],
                    "cpu_pct": cpu,
                }
            )

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)


def serve_pods(ns: str) -> dict[str, dict]:
    return kt.live_pods(ns, SERVE_SELECTOR)


ready = kt.is_ready


def served(ns: str, pod: str) -> float:
    return kt.pod_metric(ns, pod, METRICS_PORT, "ray_classifier_images_total", outcome="ok")


def replica_requests(ns: str, pod: str) -> dict[str, float]:
    """Requests each model replica of a pod handled (Ray Serve's own per-replica counter)."""
    from prometheus_client.parser import text_string_to_metric_families

    proc = kt.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}:{METRICS_PORT}/proxy/metrics", check=False
    )
    out: dict[str, float] = {}
    if proc.returncode == 0:
        for family in text_string_to_metric_families(proc.stdout):
            for s in family.samples:
                if (
                    s.name == "ray_serve_deployment_request_counter_total"
                    and s.labels.get("deployment") == "ImageClassifier"
                ):
                    out[s.labels["replica"]] = out.get(s.labels["replica"], 0) + s.value
    return out


def settle(read, quiet_s: float = 12, timeout_s: float = 60):
    """A reading once Ray's periodic metrics export has caught up (unchanged for ``quiet_s``)."""
    value, since, deadline = read(), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(2)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def longest_gap(log: list, after: float, until: float | None = None) -> float:
    """The longest time without a successful answer between ``after`` and ``until`` (monotonic; the
    last request's end by default), in seconds."""
    ends = sorted(t for t, _, ok in log if ok and t >= after)
    last = max((t for t, _, _ in log), default=after) if until is None else until
    points = [after] + ends + [max(last, ends[-1] if ends else after)]
    return max((b - a for a, b in pairwise(points)), default=0.0)


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def load_figures(load: kt.Load) -> dict:
    lat = [d for _, d, ok in load.requests_log if ok]

    def ms(q: float) -> int | None:
        return round(p(lat, q) * 1000) if lat else None  # None: nothing succeeded

    return {
        "requests": load.total,
        "failed": load.failed,
        "shed": load.shed,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
    }


class Demo:
    def __init__(self, args):
        self.args, self.tl = args, Timeline()
        self.body = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
        self.image = kt.chart_default_image()
        self.figures: dict = {}
        self.loads: list[tuple[str, float, kt.Load]] = []  # (phase, wall start, load) for the timeline

    def load(self, phase: str, clients: int, max_seconds: float) -> kt.Load:
        load = kt.Load(
            f"http://127.0.0.1:{self.port}/predict",
            self.body,
            clients=clients,
            max_seconds=max_seconds,
            timeout_s=60,
            record=True,
        )
        self.loads.append((phase, time.time() - time.monotonic(), load))
        return load

    def phase(self, name: str, start: float) -> None:
        self.tl.phases.append((name, start, time.time()))

    # --- phases -----------------------------------------------------------------------------------
    def deploy(self) -> None:
        t = self.tl.mark("helm install (mode deployment, helm-values/app-deployment-local.yaml)")
        kt.helm_install(RELEASE, self.ns, VALUES)
        kt.kubectl("rollout", "status", "-n", self.ns, f"deployment/{NAME}", "--timeout=600s", timeout=620)
        pods = serve_pods(self.ns)
        self.tl.mark("all pods Ready", pods=len(pods), seconds=round(time.time() - t))
        self.figures["deploy_s"] = round(time.time() - t)
        self.phase("deploy", t)

    def steady(self, seconds: float) -> None:
        t = self.tl.mark(f"steady load: {self.args.steady_clients} clients for {seconds:.0f} s")
        pods = sorted(serve_pods(self.ns))
        before = settle(lambda: {p: served(self.ns, p) for p in pods})
        replicas_before = {p: replica_requests(self.ns, p) for p in pods}
        with self.load("steady", self.args.steady_clients, seconds) as load:
            time.sleep(seconds)
        after = settle(lambda: {p: served(self.ns, p) for p in pods})
        per_pod = {p: int(after[p] - before[p]) for p in pods}
        per_replica = {}
        for pod in pods:
            now = replica_requests(self.ns, pod)
            for replica, count in now.items():
                per_replica[f"{pod[-5:]}/{replica.rsplit('#', 1)[-1]}"] = int(
                    count - replicas_before[pod].get(replica, 0)
                )
        self.figures["steady"] = {**load_figures(load), "per_pod": per_pod, "per_model_replica": per_replica}
        self.tl.mark("steady load done", **load_figures(load), per_pod=per_pod)
        print(f"           per model replica: {per_replica}")
        self.phase("steady", t)

    def spike(self, max_seconds: float = 360) -> None:
        clients = self.args.steady_clients * self.args.spike_factor
        hpa = kt.get("hpa", NAME, self.ns)
        if kt.get("deployment", NAME, self.ns)["spec"]["replicas"] > hpa["spec"]["minReplicas"]:
            # The steady load alone took the HPA above its minimum: a spike would find no room to scale.
            self.tl.mark("the HPA scaled up under the steady load; waiting for it to return to its minimum")
            kt.wait_for(
                lambda: len(serve_pods(self.ns)) == hpa["spec"]["minReplicas"],
                self.args.scale_down_seconds + 120,
                "the HPA back at its minimum",
                poll_s=5,
            )
        base = serve_pods(self.ns)
        t0 = self.tl.mark(f"spike: {clients} clients ({self.args.spike_factor}x)")
        f: dict = {"clients": clients, "pods_before": len(base)}
        with self.load("spike", clients, max_seconds) as load:
            deadline = time.time() + max_seconds
            new: str | None = None
            while time.time() < deadline:
                deploy = kt.get("deployment", NAME, self.ns)
                if "decision_s" not in f and deploy["spec"]["replicas"] > len(base):
                    hpa = kt.get("hpa", NAME, self.ns)
                    f["decision_s"] = round(
                        self.tl.mark(
                            "HPA decision",
                            replicas=deploy["spec"]["replicas"],
                            cpu=[m["resource"]["current"] for m in hpa["status"].get("currentMetrics", [])],
                        )
                        - t0,
                        1,
                    )
                pods = serve_pods(self.ns)
                added = [n for n in pods if n not in base]
                if added and new is None:
                    new = added[0]
                    created = iso(pods[new]["metadata"]["creationTimestamp"])
                    f["pod_created_s"] = round(self.tl.mark(f"pod {new} created", at=created) - t0, 1)
                if new and new in pods:
                    pod = pods[new]
                    if "scheduled_s" not in f and kt.condition(pod, "PodScheduled").get("status") == "True":
                        at = iso(kt.condition(pod, "PodScheduled")["lastTransitionTime"])
                        f["scheduled_s"] = round(self.tl.mark("new pod scheduled", at=at) - t0, 1)
                    if "ready_s" not in f and ready(pod):
                        at = iso(kt.condition(pod, "Ready")["lastTransitionTime"])
                        f["ready_s"] = round(
                            self.tl.mark("new pod Ready (in the Service's endpoints)", at=at) - t0, 1
                        )
                    if "ready_s" in f and "serving_s" not in f and served(self.ns, new) > 0:
                        # The pod's counter is exported every few seconds: an upper bound by that much.
                        f["serving_s"] = round(self.tl.mark("new pod served its first requests") - t0, 1)
                        time.sleep(20)
                        break
                time.sleep(1)
        f.update(load_figures(load))
        f["pods_after"] = len(serve_pods(self.ns))
        self.figures["spike"] = f
        self.tl.mark("spike over", **load_figures(load))
        self.phase("spike", t0)
        if "serving_s" not in f:
            raise AssertionError(f"no new pod served within {max_seconds:.0f} s of the spike: {f}")

    def rolling_update(self) -> None:
        repo, _ = self.image.rsplit(":", 1)
        kt.tag_image(self.image, f"{repo}:0.1.1")
        t = self.tl.mark("rolling update 0.1.0 -> 0.1.1 (helm upgrade --set image.tag=0.1.1)")
        with self.load("update", self.args.steady_clients, 1800) as load:
            time.sleep(5)
            kt.helm(
                "upgrade",
                RELEASE,
                str(kt.CHART),
                "-n",
                self.ns,
                "-f",
                str(REPO / VALUES),
                "--set",
                "image.tag=0.1.1",
            )
            kt.kubectl(
                "rollout", "status", "-n", self.ns, f"deployment/{NAME}", "--timeout=900s", timeout=920
            )
            time.sleep(10)
        images = {c["image"] for p in serve_pods(self.ns).values() for c in p["spec"]["containers"]}
        self.figures["rolling_update"] = {
            **load_figures(load),
            "seconds": round(time.time() - t),
            "images": sorted(images),
        }
        self.tl.mark("rolling update done", **load_figures(load), images=sorted(images))
        self.phase("update", t)

    def pod_loss(self) -> None:
        pods = serve_pods(self.ns)
        count = sum(ready(p) for p in pods.values())
        victim = sorted(n for n, p in pods.items() if ready(p))[0]
        with self.load("pod loss", self.args.steady_clients, 600) as load:
            time.sleep(10)
            t = self.tl.mark(f"kubectl delete pod {victim}")
            deleted = time.monotonic()
            kt.kubectl("delete", "pod", victim, "-n", self.ns, "--wait=false")
            back = kt.wait_for(
                lambda: (lambda ps: sum(ready(p) for n, p in ps.items() if n != victim) >= count and ps)(
                    serve_pods(self.ns)
                ),
                300,
                "full capacity again",
                poll_s=1,
            )
            replacement = sorted(n for n in back if n not in pods)
            at = (
                iso(kt.condition(back[replacement[0]], "Ready")["lastTransitionTime"])
                if replacement
                else time.time()
            )
            full_s = round(
                self.tl.mark("full capacity again (replacement pod Ready)", at=at, pod=replacement) - t, 1
            )
            time.sleep(10)
        gap = round(longest_gap(load.requests_log, deleted), 2)
        self.figures["pod_loss"] = {**load_figures(load), "full_capacity_s": full_s, "longest_gap_s": gap}
        self.tl.mark("pod loss over", **load_figures(load), longest_gap_s=gap)
        self.phase("pod loss", t)

    def scale_down(self, max_seconds: float) -> None:
        t = self.tl.mark("load stopped; waiting for the HPA to scale down")
        start = kt.get("deployment", NAME, self.ns)["spec"]["replicas"]
        deadline = time.time() + max_seconds
        f: dict = {"from": start}
        while time.time() < deadline:
            replicas = kt.get("deployment", NAME, self.ns)["spec"]["replicas"]
            if replicas < start and "decision_s" not in f:
                f["decision_s"] = round(self.tl.mark("HPA scale-down decision", replicas=replicas) - t)
            if "decision_s" in f and len(serve_pods(self.ns)) == replicas:
                f["pods_gone_s"] = round(self.tl.mark("surplus pod gone", pods=replicas) - t)
                f["to"] = replicas
                break
            time.sleep(2)
        self.figures["scale_down"] = f
        self.phase("idle", t)

    def prometheus_checks(self) -> None:
        variables = {"namespace": self.ns, "cluster": RELEASE, "application": "classifier"}
        with_data = empty = 0
        for panel in panels(dashboard()):
            for target in panel.get("targets", []):
                if "expr" not in target or is_cluster_only(target["expr"]):
                    continue
                result = self.prom.query(substitute(target["expr"], variables, rate_interval="1m"))
                with_data, empty = with_data + bool(result), empty + (not result)
        rules = self.prom.rules()
        targets = self.prom.active_targets()
        self.figures["prometheus"] = {
            "targets_up": sum(t["health"] == "up" for t in targets),
            "targets": len(targets),
            "dashboard_queries_with_data": with_data,
            "dashboard_queries_empty": empty,
            "rules": len(rules),
            "rules_ok": sum(r["health"] == "ok" for r in rules),
        }
        self.tl.mark("Prometheus", **self.figures["prometheus"])

    def pictures(self) -> None:
        out = self.args.out
        drawn = render(
            self.prom.url,
            out / "cluster-overview.png",
            self.tl.start,
            time.time(),
            {"namespace": self.ns, "cluster": RELEASE, "application": "classifier"},
        )
        self.tl.mark(f"wrote {out / 'cluster-overview.png'}", panels=len(drawn))
        draw_timeline(timeline_data(self), out / "demo-timeline.png")
        self.tl.mark(f"wrote {out / 'demo-timeline.png'}")
        if self.args.docs:
            for name in ("cluster-overview.png", "demo-timeline.png"):
                shutil.copy(out / name, REPO / "docs" / "img" / name)

    def run(self) -> int:
        args = self.args
        args.out.mkdir(parents=True, exist_ok=True)
        self.ns = kt.create_namespace("demo")
        self.sampler = sampler = Sampler(self.ns)
        try:
            with ClusterPrometheus([self.ns]) as self.prom:
                self.tl.mark(
                    f"Prometheus scraping namespace {self.ns} on {self.prom.url} (the PodMonitors' selection)"
                )
                self.deploy()
                sampler.start()
                with kt.gateway(f"{NAME}.{self.ns}.svc.cluster.local:8000", self.image) as self.port:
                    kt.wait_http_ok(f"http://127.0.0.1:{self.port}/ready")
                    self.steady(args.steady_seconds)
                    self.spike()
                    self.rolling_update()
                    self.pod_loss()
                self.scale_down(args.scale_down_seconds)
                self.prometheus_checks()
                self.pictures()
        except BaseException:
            print(kt.diagnostics([self.ns]), file=sys.stderr)
            raise
        finally:
            try:
                sampler.stop()
                (args.out / "timeline.txt").write_text(self.tl.text() + "\n")
                (args.out / "demo.json").write_text(
                    json.dumps(
                        {"figures": self.figures, "events": self.tl.events, "picture": timeline_data(self)},
                        indent=1,
                    )
                )
            finally:
                self.tl.mark(f"cleaning up namespace {self.ns}")
                kt.delete_namespace(self.ns)
        print("\nfigures:\n" + json.dumps(self.figures, indent=1))
        print(f"\nartifacts in {args.out}: {', '.join(sorted(p.name for p in args.out.iterdir()))}")
        return 0


def timeline_data(demo: Demo) -> dict:
    """What the timeline picture is drawn from (also saved in demo.json, so `--redraw` can draw it again)."""
    ok: dict[int, int] = {}
    bad: dict[int, int] = {}
    for _, offset, load in demo.loads:
        for t, _, good in list(load.requests_log):
            second = int(t + offset - demo.tl.start)
            counts = ok if good else bad
            counts[second] = counts.get(second, 0) + 1
    return {
        "start": demo.tl.start,
        "phases": demo.tl.phases,
        "samples": list(demo.sampler.samples),
        "answered": ok,
        "failed": bad,
    }


def draw_timeline(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0, samples = data["start"], data["samples"]
    ok = {int(k): v for k, v in data["answered"].items()}
    bad = {int(k): v for k, v in data["failed"].items()}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    colours = {
        "deploy": "#eeeeee",
        "steady": "#e3f2fd",
        "spike": "#ffe0b2",
        "update": "#e8f5e9",
        "pod loss": "#ffebee",
        "idle": "#f5f5f5",
    }
    for ax in (ax1, ax2):
        for name, start, end in data["phases"]:
            ax.axvspan(start - t0, end - t0, color=colours.get(name, "#fafafa"), zorder=0)
            if ax is ax1:
                ax.text((start + end) / 2 - t0, 0.2, name, ha="center", fontsize=8)
    if samples:
        ts = [s["t"] - t0 for s in samples]
        ax1.step(ts, [s["ready"] for s in samples], where="post", label="pods Ready")
        ax1.step(ts, [s["desired"] for s in samples], where="post", label="desired (HPA)", linestyle="--")
        cpu = [(s["t"] - t0, s["cpu_pct"]) for s in samples if s["cpu_pct"] is not None]
        if cpu:
            ax1b = ax1.twinx()
            ax1b.plot(
                [c[0] for c in cpu], [c[1] for c in cpu], color="grey", linewidth=0.8, label="HPA CPU %"
            )
            ax1b.set_ylabel("CPU % of request", fontsize=8)
    ax1.set_ylabel("pods")
    ax1.set_ylim(0, 6)
    ax1.legend(loc="upper left", fontsize=8)
    if ok:
        xs = range(min(ok), max(ok) + 1)
        ax2.plot(
            list(xs), [sum(ok.get(x - i, 0) for i in range(5)) / 5 for x in xs], label="answered/s (5 s mean)"
        )
    if bad:
        ax2.bar(list(bad), list(bad.values()), color="red", label="failed")
    ax2.set_ylabel("requests/s")
    ax2.set_xlabel("seconds since the demo started")
    ax2.legend(loc="upper left", fontsize=8)
    fig.suptitle("make demo on the test cluster: pods, HPA and traffic", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "demo")
    parser.add_argument("--steady-clients", type=int, default=1)
    parser.add_argument("--spike-factor", type=int, default=10)
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument(
        "--scale-down-seconds",
        type=float,
        default=600,
        help="how long to wait for the HPA's scale-down (its window is 300 s)",
    )
    parser.add_argument("--docs", action="store_true", help="copy the pictures to docs/img/")
    args = parser.parse_args()
    if kt.kubectl("get", "--raw", "/readyz", check=False, timeout=20).returncode != 0:
        parser.error(f"the test cluster does not answer ({kt.KUBECONFIG}): run make cluster first")
    return Demo(args).run()


if __name__ == "__main__":
    sys.exit(main())
