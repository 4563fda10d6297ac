"""Mode rayservice on the real test cluster under load: spread, autoscaling, an in-place update, worker and head loss.

    python -m bench.cluster_rayservice [--out artifacts/rayservice] [--clients 2]

Needs the test cluster (`make cluster`). Installs the chart with helm-values/app-dev.yaml (head + one
worker, no GCS fault tolerance: the quick-start shape) and helm-values/app-dev-autoscaling.yaml (Serve
autoscaling 2-4 model replicas, the Ray autoscaler 1-2 workers) into its own namespace; all traffic goes from
127.0.0.1 through a port-forward to an HAProxy gateway pod in front of `<name>-serve-svc`, the Service
KubeRay points at the serving cluster. With a closed-loop load running throughout each step:

1. steady load: requests per Ray pod (proxy) and per model replica (Ray Serve's own counters), with
   Debian's Prometheus scraping what the PodMonitors select (harness/cluster_prometheus.py):
   targets == selection, all up, the overview dashboard's queries answered, every rule evaluating;
2. autoscaling (--spike-clients): Serve's decision, the Ray autoscaler raising the RayCluster's worker
   count, the worker pod created / scheduled / Ready, the Ray node ALIVE, a model replica RUNNING on it
   and its first request served; then, without load, Serve scaling back and the idle worker's removal;
3. an update applied in place (`user_config` only, helm upgrade): same Ray cluster, failed requests;
4. the worker pod deleted: failed requests, the time until the service answers again, and until the
   Serve application is RUNNING with every replica on the replacement worker (full capacity);
5. the head pod deleted: the same figures.

Prints a timeline as it goes, writes timeline.txt and rayservice.json to --out, removes its namespace
and the gateway afterwards, also when interrupted.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import threading
import time
from pathlib import Path

import requests
import skimage
import yaml

from bench.cluster_demo import Timeline, iso, load_figures, longest_gap, replica_requests, settle
from harness import kubetest as kt
from harness.cluster_prometheus import ClusterPrometheus

REPO = kt.REPO

RELEASE = "classifier"
NAME = "classifier-ray-serve-image-classifier"
VALUES = "helm-values/app-dev.yaml"
# app-dev.yaml with Serve autoscaling (2-4 model replicas) and the Ray autoscaler (1-2 workers).
AUTOSCALING_VALUES = (VALUES, "helm-values/app-dev-autoscaling.yaml")
METRICS_PORT = 8080


def ray_pods(ns: str) -> dict[str, dict]:
    return kt.live_pods(ns, "ray.io/cluster")


def node_type(pod: dict) -> str:
    return pod["metadata"]["labels"].get("ray.io/node-type", "?")


def proxied(ns: str, pod: str) -> float:
    """Requests the Serve proxy of this Ray pod answered (Ray Serve's HTTP request counter)."""
    return kt.pod_metric(ns, pod, METRICS_PORT, "ray_serve_num_http_requests_total")


def with_user_config(deployment: str, user_config: dict) -> list[dict]:
    """serveConfig.deploymentOverrides of the installed values files with ``deployment``'s user_config
    replaced: a `--set-json` of that list replaces the files' whole list (helm does not merge lists),
    so an override of user_config alone would drop the layer's autoscaling_config."""
    overrides: list[dict] = []
    for v in AUTOSCALING_VALUES:
        overrides = (yaml.safe_load((REPO / v).read_text()).get("serveConfig") or {}).get(
            "deploymentOverrides", overrides
        )
    overrides = copy.deepcopy(overrides)
    entry = next((o for o in overrides if o["name"] == deployment), None)
    if entry is None:
        overrides.append(entry := {"name": deployment})
    entry.setdefault("set", {})["user_config"] = user_config
    return overrides


class ScalingWatch(threading.Thread):
    """Every 2 s, each scaling layer of the RayService as it reports itself: Serve's target and
    replicas of the model deployment (with their node), the worker count the Ray autoscaler wrote
    into the RayCluster, the worker pods, the Ray nodes, and the requests the model replicas of
    each new worker pod answered. Marks on the timeline the first time each step is seen."""

    def __init__(self, ns: str, fetch, tl: Timeline):
        super().__init__(daemon=True)
        self.ns, self.fetch, self.tl = ns, fetch, tl
        self.first: dict[str, float] = {}  # step -> wall-clock time
        self.samples: list[dict] = []
        self.errors = 0
        self.added: list[str] = []  # worker pods that appeared during the watch
        self.base = self.read()
        self._halt = threading.Event()

    def read(self) -> dict:
        model = self.fetch("/api/serve/applications/")["applications"]["classifier"]["deployments"][
            "ImageClassifier"
        ]
        nodes = self.fetch("/api/v0/nodes?limit=100&detail=true")["data"]["result"]["result"]
        [raycluster] = kt.get("raycluster", namespace=self.ns)
        pods = {
            p["metadata"]["name"]: p
            for p in kt.get("pods", namespace=self.ns, selector="ray.io/node-type=worker")
        }
        return {
            "t": time.time(),
            "target": model.get("target_num_replicas"),
            "replicas": [(r["replica_id"], r["state"], r.get("node_ip")) for r in model.get("replicas", [])],
            "desired_workers": raycluster["spec"]["workerGroupSpecs"][0].get("replicas"),
            "nodes": {n["node_ip"]: n for n in nodes if not n.get("is_head_node")},
            "pods": pods,
        }

    def once(self, step: str, at: float | None = None, **figures) -> None:
        if step not in self.first:
            self.first[step] = self.tl.mark(step, at=at, **figures)

    def new_pods(self, sample: dict) -> dict[str, dict]:
        return {n: p for n, p in sample["pods"].items() if n not in self.base["pods"]}

    def observe(self, sample: dict) -> None:
        base = self.base
        if sample["target"] > base["target"]:
            self.once(
                "Serve autoscaling decision", target_num_replicas=f"{base['target']} -> {sample['target']}"
            )
        if sample["desired_workers"] > base["desired_workers"]:
            self.once(
                "Ray autoscaler: RayCluster worker replicas raised",
                replicas=f"{base['desired_workers']} -> {sample['desired_workers']}",
            )
        for name, pod in self.new_pods(sample).items():
            self.once("worker pod created", at=iso(pod["metadata"]["creationTimestamp"]), pod=name)
            scheduled = kt.condition(pod, "PodScheduled")
            if scheduled.get("status") == "True":
                self.once(
                    "worker pod scheduled",
                    at=iso(scheduled["lastTransitionTime"]),
                    node=pod["spec"].get("nodeName"),
                )
            if kt.is_ready(pod):
                self.once("worker pod Ready", at=iso(kt.condition(pod, "Ready")["lastTransitionTime"]))
            ip = pod["status"].get("podIP")
            node = sample["nodes"].get(ip) if ip else None
            if node and node.get("state") == "ALIVE":
                start = node.get("start_time_ms")
                self.once("Ray node joined (ALIVE)", at=start / 1000 if start else None, node_ip=ip)
            on_it = [r for r in sample["replicas"] if ip and r[2] == ip]
            if any(state == "RUNNING" for _, state, _ in on_it):
                self.once("model replica RUNNING on the new worker", replicas=len(on_it))
                if "first request served on the new worker" not in self.first:
                    served = sum(replica_requests(self.ns, name).values())
                    if served > 0:  # Ray exports the counter every few seconds: an upper bound by that much
                        self.once("first request served on the new worker", requests=int(served))
        if "load stopped" in self.first:
            if sample["target"] <= base["target"]:
                self.once("Serve scaled the model back down", target_num_replicas=sample["target"])
            if sample["desired_workers"] <= base["desired_workers"]:
                self.once(
                    "Ray autoscaler: RayCluster worker replicas lowered", replicas=sample["desired_workers"]
                )
            pods, added = sample["pods"], self.added
            if added and all(n not in pods or pods[n]["metadata"].get("deletionTimestamp") for n in added):
                self.once("idle worker pod deleted")
            if added and not any(n in pods for n in added):
                self.once("idle worker pod gone")
        self.added += [n for n in self.new_pods(sample) if n not in self.added]

    def run(self) -> None:
        while not self._halt.wait(2):
            try:
                sample = self.read()
            except (AssertionError, KeyError, ValueError, OSError, requests.RequestException):
                self.errors += 1  # the head answers slowly under the load: the next sample counts
                continue
            self.samples.append(
                {k: v for k, v in sample.items() if k not in ("pods", "nodes")}
                | {"workers": len(sample["pods"]), "ray_workers": len(sample["nodes"])}
            )
            self.observe(sample)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(30)


STEPS_UP = (
    "Serve autoscaling decision",
    "Ray autoscaler: RayCluster worker replicas raised",
    "worker pod created",
    "worker pod scheduled",
    "worker pod Ready",
    "Ray node joined (ALIVE)",
    "model replica RUNNING on the new worker",
    "first request served on the new worker",
)
STEPS_DOWN = (
    "Serve scaled the model back down",
    "Ray autoscaler: RayCluster worker replicas lowered",
    "idle worker pod deleted",
    "idle worker pod gone",
)


def observe_autoscaling(
    ns: str,
    port: int,
    body: bytes,
    tl: Timeline,
    clients: int = 10,
    max_up_s: float = 480,
    max_down_s: float = 420,
) -> dict:
    """A closed-loop load of ``clients`` from 127.0.0.1 until a model replica on a worker pod the Ray
    autoscaler added has served requests (or ``max_up_s``), then no load until that worker is gone
    (or ``max_down_s``). Returns the seconds from load start to each step, the load's figures and the
    watch's samples; raises nothing, so the caller asserts on what it needs."""
    with kt.ray_dashboard(ns, NAME) as fetch:
        watch = ScalingWatch(ns, fetch, tl)
        watch.start()
        try:
            t0 = tl.mark(
                f"autoscaling: {clients} clients",
                replicas=watch.base["target"],
                workers=len(watch.base["pods"]),
            )
            with kt.Load(
                f"http://127.0.0.1:{port}/predict",
                body,
                clients=clients,
                max_seconds=max_up_s,
                timeout_s=60,
                record=True,
            ) as load:
                deadline = time.time() + max_up_s
                while time.time() < deadline and "first request served on the new worker" not in watch.first:
                    time.sleep(1)
                time.sleep(15)  # the new capacity serving for a while
            watch.once("load stopped", **load_figures(load))
            deadline = time.time() + max_down_s
            while time.time() < deadline and "idle worker pod gone" not in watch.first:
                time.sleep(2)
        finally:
            watch.stop()
    peak = max((s["target"] for s in watch.samples), default=None)
    steps = {k: round(v - t0, 1) for k, v in watch.first.items()}
    return {
        "clients": clients,
        **load_figures(load),
        "failures": dict(load.failures.most_common(3)),
        "steps_s": steps,
        "peak_target_replicas": peak,
        "peak_workers": max((s["workers"] for s in watch.samples), default=None),
        "added_pods": watch.added,
        "watch_errors": watch.errors,
        "samples": watch.samples,
    }


class Bench:
    def __init__(self, args):
        self.args, self.tl, self.figures = args, Timeline(), {}
        self.body = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
        self.image = kt.chart_default_image()

    def load(self, max_seconds: float) -> kt.Load:
        return kt.Load(
            f"http://127.0.0.1:{self.port}/predict",
            self.body,
            clients=self.args.clients,
            max_seconds=max_seconds,
            timeout_s=60,
            record=True,
        )

    # --- what the Ray cluster reports ------------------------------------------------------------------
    def serve_status(self) -> dict:
        """The application as Serve reports it on the active head; {} while the head does not answer."""
        try:
            return kt.serve_applications(self.ns, NAME).get("classifier", {})
        except (AssertionError, StopIteration, requests.RequestException):
            return {}

    def running_replicas(self) -> int:
        app = self.serve_status()
        if app.get("status") != "RUNNING":
            return 0
        model = app["deployments"]["ImageClassifier"]
        return sum(r["state"] == "RUNNING" for r in model.get("replicas", []))

    # --- steps ---------------------------------------------------------------------------------------
    def deploy(self) -> None:
        t = self.tl.mark(f"helm install (mode rayservice, {' + '.join(AUTOSCALING_VALUES)})")
        kt.helm_install(RELEASE, self.ns, *AUTOSCALING_VALUES)
        kt.wait_rayservice_ready(self.ns, NAME, timeout_s=900)
        self.replicas = kt.wait_for(self.running_replicas, 300, "the model replicas RUNNING", poll_s=3)
        self.figures["deploy_s"] = round(self.tl.mark("RayService Ready", replicas=self.replicas) - t)

    def steady(self, seconds: float) -> None:
        pods = sorted(ray_pods(self.ns))
        self.tl.mark(f"steady load: {self.args.clients} clients for {seconds:.0f} s")
        before = settle(lambda: {p: proxied(self.ns, p) for p in pods})
        replicas_before = {p: replica_requests(self.ns, p) for p in pods}
        with self.load(seconds) as load:
            time.sleep(seconds)
        after = settle(lambda: {p: proxied(self.ns, p) for p in pods})
        pods_by_type = {p: node_type(ray_pods(self.ns)[p]) for p in pods}
        per_pod = {f"{pods_by_type[p]} {p[-5:]}": int(after[p] - before[p]) for p in pods}
        per_replica = {}
        for pod in pods:
            for replica, count in replica_requests(self.ns, pod).items():
                per_replica[replica.rsplit("#", 1)[-1]] = int(count - replicas_before[pod].get(replica, 0))
        self.figures["steady"] = {
            **load_figures(load),
            "per_proxy": per_pod,
            "per_model_replica": per_replica,
        }
        self.tl.mark(
            "steady load done", **load_figures(load), per_proxy=per_pod, per_model_replica=per_replica
        )

    def in_place_update(self) -> None:
        cluster = kt.active_cluster(self.ns, NAME)
        before = self.serve_status()["deployments"]["ImageClassifier"]["deployment_config"]["user_config"]
        want = 4 if before.get("max_batch_size") != 4 else 8
        with self.load(600) as load:
            time.sleep(10)
            t = self.tl.mark(
                f"helm upgrade: ImageClassifier user_config max_batch_size {before.get('max_batch_size')} -> {want}"
            )
            override = with_user_config("ImageClassifier", {**before, "max_batch_size": want})
            values = [arg for v in AUTOSCALING_VALUES for arg in ("-f", str(REPO / v))]
            kt.helm(
                "upgrade",
                RELEASE,
                str(kt.CHART),
                "-n",
                self.ns,
                *values,
                "--set-json",
                f"serveConfig.deploymentOverrides={json.dumps(override)}",
            )

            def applied():
                app = self.serve_status()
                config = app.get("deployments", {}).get("ImageClassifier", {}).get("deployment_config", {})
                return (
                    app.get("status") == "RUNNING"
                    and config.get("user_config", {}).get("max_batch_size") == want
                )

            kt.wait_for(applied, 300, "the new user_config RUNNING", poll_s=1)
            applied_s = round(self.tl.mark("new user_config live (Serve RUNNING)") - t, 1)
            time.sleep(10)
        same = kt.active_cluster(self.ns, NAME) == cluster
        self.figures["in_place_update"] = {
            **load_figures(load),
            "applied_s": applied_s,
            "same_ray_cluster": same,
        }
        self.tl.mark("in-place update done", **load_figures(load), same_ray_cluster=same)

    def autoscale(self) -> None:
        f = observe_autoscaling(self.ns, self.port, self.body, self.tl, clients=self.args.spike_clients)
        self.figures["autoscaling"] = {k: v for k, v in f.items() if k != "samples"}
        (self.args.out / "autoscaling-samples.json").write_text(json.dumps(f["samples"], indent=1))
        missing = [s for s in STEPS_UP + STEPS_DOWN if s not in f["steps_s"]]
        self.tl.mark(
            "autoscaling over",
            **{k: v for k, v in f.items() if k in ("requests", "failed", "shed", "p50_ms", "p99_ms")},
            missing=missing,
        )

    def pod_loss(self, kind: str) -> None:
        def one():  # an autoscaled worker may still be on its way out
            pods = [n for n, p in ray_pods(self.ns).items() if node_type(p) == kind]
            return pods if len(pods) == 1 else None

        [victim] = kt.wait_for(one, 300, f"exactly one {kind} pod")
        forward_restarts = len(kt.GATEWAY_FORWARD_RESTARTS)
        with self.load(900) as load:
            time.sleep(10)
            t = self.tl.mark(f"kubectl delete pod {victim} ({kind})")
            deleted = time.monotonic()
            kt.kubectl("delete", "pod", victim, "-n", self.ns, "--wait=false")

            def full():
                pods = ray_pods(self.ns)
                fresh = [n for n, p in pods.items() if node_type(p) == kind and n != victim]
                return (
                    fresh
                    and all(kt.is_ready(p) for p in pods.values())
                    and self.running_replicas() >= self.replicas
                    and fresh
                )

            replacement = kt.wait_for(
                full, 900, f"a new {kind} pod and every model replica RUNNING", poll_s=2
            )
            full_s = round(
                self.tl.mark(
                    f"full capacity again ({kind} {replacement[0]} Ready, "
                    f"{self.replicas} model replicas RUNNING)"
                )
                - t,
                1,
            )

            def answering():
                """The first success after the first failure (the deletion itself when nothing failed)."""
                with load._lock:
                    after = sorted((end, ok) for end, _, ok in load.requests_log if end > deleted)
                first_failure = next((end for end, ok in after if not ok), None)
                if first_failure is None:
                    return deleted
                return next((end for end, ok in after if ok and end > first_failure), None)

            again = kt.wait_for(answering, 300, "the service answering through the gateway again", poll_s=1)
            if again > deleted:
                self.tl.mark("service answering again", at=time.time() - (time.monotonic() - again))
            time.sleep(10)
            stopped = time.monotonic()
        gap = round(longest_gap(load.requests_log, deleted, until=stopped), 1)
        figures = {
            **load_figures(load),
            "longest_gap_s": gap,
            "full_capacity_s": full_s,
            "answering_again_s": round(again - deleted, 1),
            "failures": dict(load.failures.most_common(3)),
            # kubectl port-forward to the gateway exiting (and restarted): its gaps count as failures
            "port_forward_restarts": len(kt.GATEWAY_FORWARD_RESTARTS) - forward_restarts,
        }
        self.figures[f"{kind}_loss"] = figures
        self.tl.mark(f"{kind} loss over", **{k: v for k, v in figures.items() if k != "failures"})

    def run(self) -> int:
        args = self.args
        args.out.mkdir(parents=True, exist_ok=True)
        self.ns = kt.create_namespace("rayservice")
        try:
            self.deploy()
            with (
                kt.gateway(f"{NAME}-serve-svc.{self.ns}.svc.cluster.local:8000", self.image) as self.port,
                ClusterPrometheus([self.ns]) as prom,
            ):
                kt.wait_http_ok(f"http://127.0.0.1:{self.port}/ready")
                steps = args.steps.split(",")
                if "steady" in steps:
                    # The steady load is also the load under which the overview's queries must return data.
                    checked = kt.check_cluster_prometheus(
                        self.ns, prom, lambda: self.steady(args.steady_seconds)
                    )
                    self.figures["prometheus"] = {
                        "targets": len(checked["targets"]),
                        "queries": checked["queries"],
                        "empty_panels": checked["empty_panels"],
                    }
                    self.tl.mark(
                        "Prometheus: targets == the PodMonitors' selection, all up, rules ok",
                        **self.figures["prometheus"],
                    )
                for step, do in (
                    ("autoscale", self.autoscale),
                    ("update", self.in_place_update),
                    ("worker", lambda: self.pod_loss("worker")),
                    ("head", lambda: self.pod_loss("head")),
                ):
                    if step in steps:
                        do()
        except BaseException:
            print(kt.diagnostics([self.ns]), file=sys.stderr)
            raise
        finally:
            (args.out / "timeline.txt").write_text(self.tl.text() + "\n")
            (args.out / "rayservice.json").write_text(
                json.dumps({"figures": self.figures, "events": self.tl.events}, indent=1)
            )
            self.tl.mark(f"cleaning up namespace {self.ns}")
            kt.delete_namespace(self.ns)
        print("\nfigures:\n" + json.dumps(self.figures, indent=1))
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "rayservice")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument(
        "--steps",
        default="steady,autoscale,update,worker,head",
        help="which steps to run, comma-separated (in this order whatever is given)",
    )
    parser.add_argument(
        "--spike-clients", type=int, default=10, help="the load that makes Serve and Ray scale up"
    )
    args = parser.parse_args()
    if kt.kubectl("get", "--raw", "/readyz", check=False, timeout=20).returncode != 0:
        parser.error(f"the test cluster does not answer ({kt.KUBECONFIG}): run make cluster first")
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
