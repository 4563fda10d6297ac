"""Mode rayservice on the real test cluster under load: spread, an in-place update, worker and head loss.

    python -m bench.cluster_rayservice [--out artifacts/rayservice] [--clients 2]

Needs the test cluster (`make cluster`). Installs the chart with helm-values/app-dev.yaml (head + one
worker, no GCS fault tolerance: the quick-start shape) into its own namespace; all traffic goes from
127.0.0.1 through a port-forward to an HAProxy gateway pod in front of `<name>-serve-svc`, the Service
KubeRay points at the serving cluster. With a closed-loop load running throughout each step:

1. steady load: requests per Ray pod (proxy) and per model replica (Ray Serve's own counters), with
   Debian's Prometheus scraping what the PodMonitors select (scripts/monitoring/cluster_prometheus.py):
   targets == selection, all up, the overview dashboard's queries answered, every rule evaluating;
2. an update applied in place (`user_config` only, helm upgrade): same Ray cluster, failed requests;
3. the worker pod deleted: failed requests, the time until the service answers again, and until the
   Serve application is RUNNING with every replica on the replacement worker (full capacity);
4. the head pod deleted: the same figures.

Prints a timeline as it goes, writes timeline.txt and rayservice.json to --out, removes its namespace
and the gateway afterwards, also when interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import requests
import skimage

from bench.cluster_demo import Timeline, load_figures, longest_gap, replica_requests, settle
from tests.cluster import kubetest as kt

REPO = kt.REPO
sys.path.insert(0, str(REPO / "scripts" / "monitoring"))
from cluster_prometheus import ClusterPrometheus  # noqa: E402
RELEASE = "classifier"
NAME = "classifier-ray-serve-image-classifier"
VALUES = "helm-values/app-dev.yaml"
METRICS_PORT = 8080


def ray_pods(ns: str) -> dict[str, dict]:
    return kt.live_pods(ns, "ray.io/cluster")


def node_type(pod: dict) -> str:
    return pod["metadata"]["labels"].get("ray.io/node-type", "?")


def proxied(ns: str, pod: str) -> float:
    """Requests the Serve proxy of this Ray pod answered (Ray Serve's HTTP request counter)."""
    return kt.pod_metric(ns, pod, METRICS_PORT, "ray_serve_num_http_requests_total")


class Bench:
    def __init__(self, args):
        self.args, self.tl, self.figures = args, Timeline(), {}
        self.body = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
        self.image = kt.chart_default_image()

    def load(self, max_seconds: float) -> kt.Load:
        return kt.Load(f"http://127.0.0.1:{self.port}/predict", self.body, clients=self.args.clients,
                       max_seconds=max_seconds, timeout_s=60, record=True)

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
        t = self.tl.mark(f"helm install (mode rayservice, {VALUES})")
        kt.helm_install(RELEASE, self.ns, VALUES)
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
        self.figures["steady"] = {**load_figures(load), "per_proxy": per_pod, "per_model_replica": per_replica}
        self.tl.mark("steady load done", **load_figures(load), per_proxy=per_pod, per_model_replica=per_replica)

    def in_place_update(self) -> None:
        cluster = kt.active_cluster(self.ns, NAME)
        before = self.serve_status()["deployments"]["ImageClassifier"]["deployment_config"]["user_config"]
        want = 4 if before.get("max_batch_size") != 4 else 8
        with self.load(600) as load:
            time.sleep(10)
            t = self.tl.mark(f"helm upgrade: ImageClassifier user_config max_batch_size {before.get('max_batch_size')} -> {want}")
            override = [{"name": "ImageClassifier", "set": {"user_config": {**before, "max_batch_size": want}}}]
            kt.helm("upgrade", RELEASE, str(kt.CHART), "-n", self.ns, "-f", str(REPO / VALUES), "--set-json",
                    f"serveConfig.deploymentOverrides={json.dumps(override)}")

            def applied():
                app = self.serve_status()
                config = app.get("deployments", {}).get("ImageClassifier", {}).get("deployment_config", {})
                return app.get("status") == "RUNNING" and config.get("user_config", {}).get("max_batch_size") == want
            kt.wait_for(applied, 300, "the new user_config RUNNING", poll_s=1)
            applied_s = round(self.tl.mark("new user_config live (Serve RUNNING)") - t, 1)
            time.sleep(10)
        same = kt.active_cluster(self.ns, NAME) == cluster
        self.figures["in_place_update"] = {**load_figures(load), "applied_s": applied_s, "same_ray_cluster": same}
        self.tl.mark("in-place update done", **load_figures(load), same_ray_cluster=same)

    def pod_loss(self, kind: str) -> None:
        [victim] = [n for n, p in ray_pods(self.ns).items() if node_type(p) == kind]
        with self.load(900) as load:
            time.sleep(10)
            t = self.tl.mark(f"kubectl delete pod {victim} ({kind})")
            deleted = time.monotonic()
            kt.kubectl("delete", "pod", victim, "-n", self.ns, "--wait=false")

            def full():
                pods = ray_pods(self.ns)
                fresh = [n for n, p in pods.items() if node_type(p) == kind and n != victim]
                return fresh and all(kt.condition(p, "Ready").get("status") == "True" for p in pods.values()) \
                    and self.running_replicas() >= self.replicas and fresh
            replacement = kt.wait_for(full, 900, f"a new {kind} pod and every model replica RUNNING", poll_s=2)
            full_s = round(self.tl.mark(f"full capacity again ({kind} {replacement[0]} Ready, "
                                        f"{self.replicas} model replicas RUNNING)") - t, 1)
            time.sleep(10)
        gap = round(longest_gap(load.requests_log, deleted), 1)
        after = sorted((end, ok) for end, _, ok in load.requests_log if end > deleted)
        first_failure = next((end for end, ok in after if not ok), None)
        # Answering again: the first success after the first failure (0 when nothing failed).
        again = next((end for end, ok in after if ok and end > first_failure), None) if first_failure else deleted
        if again and first_failure:
            self.tl.mark("service answering again", at=time.time() - (time.monotonic() - again))
        figures = {**load_figures(load), "longest_gap_s": gap, "full_capacity_s": full_s,
                   "answering_again_s": round(again - deleted, 1) if again else None,
                   "failures": dict(load.failures.most_common(3))}
        self.figures[f"{kind}_loss"] = figures
        self.tl.mark(f"{kind} loss over", **{k: v for k, v in figures.items() if k != "failures"})

    def run(self) -> int:
        args = self.args
        args.out.mkdir(parents=True, exist_ok=True)
        self.ns = kt.create_namespace("rayservice")
        try:
            self.deploy()
            with kt.gateway(f"{NAME}-serve-svc.{self.ns}.svc.cluster.local:8000", self.image) as self.port, \
                    ClusterPrometheus([self.ns]) as prom:
                kt.wait_http_ok(f"http://127.0.0.1:{self.port}/ready")
                # The steady load is also the load under which the overview's queries must return data.
                checked = kt.check_cluster_prometheus(self.ns, prom, lambda: self.steady(args.steady_seconds))
                self.figures["prometheus"] = {"targets": len(checked["targets"]), "queries": checked["queries"],
                                              "empty_panels": checked["empty_panels"]}
                self.tl.mark("Prometheus: targets == the PodMonitors' selection, all up, rules ok",
                             **self.figures["prometheus"])
                self.in_place_update()
                self.pod_loss("worker")
                self.pod_loss("head")
        except BaseException:
            print(kt.diagnostics([self.ns]), file=sys.stderr)
            raise
        finally:
            (args.out / "timeline.txt").write_text(self.tl.text() + "\n")
            (args.out / "rayservice.json").write_text(json.dumps({"figures": self.figures, "events": self.tl.events},
                                                                 indent=1))
            self.tl.mark(f"cleaning up namespace {self.ns}")
            kt.delete_namespace(self.ns)
        print("\nfigures:\n" + json.dumps(self.figures, indent=1))
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "rayservice")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--steady-seconds", type=float, default=60)
    args = parser.parse_args()
    if kt.kubectl("get", "--raw", "/readyz", check=False, timeout=20).returncode != 0:
        parser.error(f"the test cluster does not answer ({kt.KUBECONFIG}): run make cluster first")
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
