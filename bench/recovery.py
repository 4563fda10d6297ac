"""What a RayService does to traffic, measured on a real Ray cluster: in-place updates and a replica kill.

    python -m bench.recovery [--clients 4] [--json artifacts/kuberay_behaviour.json]
                             [--model-option health_check_period_s=2 ...]

Starts a Ray head the way KubeRay starts a head pod (harness/ray_cluster.py), PUTs the serveConfigV2 of the
rendered ``kuberay/rayservice.yaml`` to the dashboard (what the operator does), and under a bounded
concurrent load of cat predictions on 127.0.0.1:

1. changes the model deployment's ``user_config`` (batch settings): must apply in place, same replicas;
2. changes its ``num_replicas`` (2 -> 3);
3. SIGKILLs one model replica's process (an OOM kill, say): Serve's controller replaces it.

Prints, per phase, requests sent and failed, and for the kill the time until the replacement replica
is RUNNING (time to recovery) and until the deployment is HEALTHY with its full replica count again.
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
import yaml

from harness.ray_cluster import RayCluster, load_serve_config
from loadtest.images import CAT_LABELS

REPO = Path(__file__).resolve().parents[1]

RENDERED_RAYSERVICE = REPO / "kuberay" / "rayservice.yaml"
APP = "classifier"
MODEL = "ImageClassifier"
REPLICA_TITLE = f"ServeReplica:{APP}:{MODEL}"


def rendered_serve_config(path: Path = RENDERED_RAYSERVICE) -> tuple[dict, str]:
    """serveConfigV2 of the rendered RayService, else the repo's serve_config.yaml (with a warning)."""
    if path.exists():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "RayService":
                return yaml.safe_load(doc["spec"]["serveConfigV2"]), f"{path.relative_to(REPO)} serveConfigV2"
        raise ValueError(f"{path} has no RayService")
    warnings.warn(f"{path} does not exist (not rendered yet): using serve_config.yaml instead", stacklevel=2)
    return load_serve_config(), "serve_config.yaml (rendered RayService missing)"


def deployment_of(config: dict, name: str = MODEL) -> dict:
    [app] = [a for a in config["applications"] if a["name"] == APP]
    [dep] = [d for d in app["deployments"] if d["name"] == name]
    return dep


@dataclass
class Load:
    """N client threads POSTing the cat to /predict back to back; every outcome is timestamped."""

    url: str
    image: bytes
    clients: int = 4
    outcomes: list[tuple[float, bool, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]

    def _run(self) -> None:
        with requests.Session() as http:
            while not self._stop.is_set():
                try:
                    r = http.post(
                        f"{self.url}/predict",
                        data=self.image,
                        headers={"Content-Type": "image/png"},
                        timeout=30,
                    )
                    ok = r.status_code == 200 and r.json()["predictions"][0]["label"] in CAT_LABELS
                    detail = "" if ok else f"{r.status_code} {r.text[:200]}"
                except (requests.RequestException, ValueError, KeyError) as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"[:200]
                with self._lock:
                    self.outcomes.append((time.monotonic(), ok, detail))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)

    def window(self, start: float, end: float) -> dict:
        with self._lock:
            got = [o for o in self.outcomes if start <= o[0] < end]
        failures = [d for _, ok, d in got if not ok]
        return {
            "requests": len(got),
            "failed": len(failures),
            "failures": sorted(set(failures))[:5],
            "seconds": round(end - start, 2),
        }


class Serve:
    """The dashboard's Serve REST API of one cluster (what the KubeRay operator talks to)."""

    def __init__(self, cluster: RayCluster):
        self.cluster = cluster

    def put(self, config: dict) -> None:
        config = copy.deepcopy(config)
        config.setdefault("http_options", {}).update(host="127.0.0.1", port=self.cluster.serve_port)
        r = self.cluster.http.put(
            f"{self.cluster.dashboard_url}/api/serve/applications/", json=config, timeout=30
        )
        r.raise_for_status()

    def app(self) -> dict:
        r = self.cluster.http.get(f"{self.cluster.dashboard_url}/api/serve/applications/", timeout=10)
        r.raise_for_status()
        return r.json()["applications"].get(APP, {})

    def model(self) -> dict:
        return self.app().get("deployments", {}).get(MODEL, {})

    def running_replicas(self) -> list[dict]:
        return [r for r in self.model().get("replicas", []) if r.get("state") == "RUNNING"]

    def wait(self, predicate, timeout_s: float, what: str, poll_s: float = 0.1) -> float:
        """Poll until predicate() holds; return the monotonic time it first held."""
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return time.monotonic()
            except (requests.RequestException, KeyError) as exc:
                last = exc
            time.sleep(poll_s)
        raise TimeoutError(
            f"timed out after {timeout_s}s waiting for {what} (app: {self._summary()}; last error: {last})"
        )

    def settled(self, num_replicas: int, user_config: dict | None = None) -> bool:
        app = self.app()
        model = app.get("deployments", {}).get(MODEL, {})
        running = [r for r in model.get("replicas", []) if r.get("state") == "RUNNING"]
        return (
            app.get("status") == "RUNNING"
            and model.get("status") == "HEALTHY"
            and len(running) == len(model.get("replicas", [])) == num_replicas
            and (user_config is None or model.get("deployment_config", {}).get("user_config") == user_config)
        )

    def _summary(self) -> str:
        try:
            app = self.app()
            model = app.get("deployments", {}).get(MODEL, {})
            return json.dumps(
                {
                    "app": app.get("status"),
                    "model": model.get("status"),
                    "replicas": [(r.get("replica_id"), r.get("state")) for r in model.get("replicas", [])],
                }
            )
        except requests.RequestException as exc:
            return repr(exc)


def replica_process(cluster: RayCluster, pid: int) -> psutil.Process:
    """The replica's process, checked to be this cluster's and titled as a model replica."""
    [proc] = [p for p in cluster.processes() if p.pid == pid]
    title = " ".join(proc.cmdline())
    if REPLICA_TITLE not in title:
        raise RuntimeError(f"pid {pid} is not a {REPLICA_TITLE} process: {title!r}")
    return proc


def run(
    image: bytes, clients: int = 4, num_cpus: int = 4, log=print, model_options: dict | None = None
) -> dict:
    """The whole scenario on a fresh cluster; returns the figures (also logged as it goes).
    ``model_options`` overrides fields of the model deployment's config (experiments only)."""
    base, source = rendered_serve_config()
    model = deployment_of(base)
    if model_options:
        model.update(model_options)
        source += f" with {model_options}"
    replicas0 = model["num_replicas"]
    figures: dict = {"config_source": source, "clients": clients}
    started = time.monotonic()
    with RayCluster(num_cpus=num_cpus) as cluster:
        serve = Serve(cluster)
        serve.put(base)
        serve.wait(
            lambda: serve.settled(replicas0, model.get("user_config")), 180, "first deployment", poll_s=0.5
        )
        figures["deploy_s"] = round(time.monotonic() - started, 1)
        r = requests.post(
            f"{cluster.serve_url}/predict", data=image, headers={"Content-Type": "image/png"}, timeout=30
        )
        r.raise_for_status()
        figures["first_prediction"] = r.json()["predictions"][0]["label"]
        log(f"deployed from {source} in {figures['deploy_s']} s; cat -> {figures['first_prediction']}")

        with Load(cluster.serve_url, image, clients) as load:
            time.sleep(3)
            t0 = time.monotonic()
            figures["baseline"] = load.window(started, t0)

            # 1. user_config: batch settings change live, through reconfigure(), on the same replicas.
            pids_before = sorted(r["pid"] for r in serve.running_replicas())
            config1 = copy.deepcopy(base)
            new_user_config = {
                **model.get("user_config", {}),
                "max_batch_size": 8,
                "batch_wait_timeout_s": 0.01,
            }
            deployment_of(config1)["user_config"] = new_user_config
            serve.put(config1)
            t1 = serve.wait(lambda: serve.settled(replicas0, new_user_config), 60, "user_config applied")
            time.sleep(2)
            pids_after = sorted(r["pid"] for r in serve.running_replicas())
            figures["user_config"] = {
                **load.window(t0, time.monotonic()),
                "apply_s": round(t1 - t0, 2),
                "replicas_restarted": pids_before != pids_after,
            }
            log(f"user_config update: {figures['user_config']}")

            # 2. replica count: 2 -> 3 (a new replica loads and warms its model before taking traffic).
            t2 = time.monotonic()
            config2 = copy.deepcopy(config1)
            replicas1 = replicas0 + 1
            deployment_of(config2)["num_replicas"] = replicas1
            serve.put(config2)
            t3 = serve.wait(lambda: serve.settled(replicas1, new_user_config), 90, "scale-up", poll_s=0.25)
            time.sleep(2)
            figures["scale"] = {
                **load.window(t2, time.monotonic()),
                "from": replicas0,
                "to": replicas1,
                "apply_s": round(t3 - t2, 2),
            }
            log(f"replica count update: {figures['scale']}")

            # 3. kill one model replica's process, as the kernel's OOM killer would.
            victim = serve.running_replicas()[0]
            proc = replica_process(cluster, victim["pid"])
            t4 = time.monotonic()
            proc.send_signal(signal.SIGKILL)

            def replaced() -> bool:
                running = serve.running_replicas()
                return len(running) == replicas1 and victim["replica_id"] not in {
                    r["replica_id"] for r in running
                }

            t_replaced = serve.wait(replaced, 60, "a replacement replica RUNNING")
            t_healthy = serve.wait(lambda: serve.settled(replicas1, new_user_config), 60, "HEALTHY again")
            running_after = sorted(r["replica_id"] for r in serve.running_replicas())
            time.sleep(2)
            window = load.window(t4, time.monotonic())
            with load._lock:
                first_ok = next((t for t, ok, _ in load.outcomes if ok and t > t4), None)
            figures["kill"] = {
                **window,
                "replica": victim["replica_id"],
                "pid": victim["pid"],
                "running_after": running_after,
                "recovery_s": round(t_replaced - t4, 2),
                "healthy_s": round(t_healthy - t4, 2),
                "first_success_after_kill_s": None if first_ok is None else round(first_ok - t4, 3),
            }
            log(f"replica kill: {figures['kill']}")
        figures["total_requests"] = len(load.outcomes)
        figures["total_failed"] = sum(1 for _, ok, _ in load.outcomes if not ok)
    figures["total_s"] = round(time.monotonic() - started, 1)
    return figures


def main() -> None:
    import skimage

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=YAML",
        help="override a field of the model deployment, e.g. health_check_period_s=2",
    )
    args = parser.parse_args()
    options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.model_option)}
    image = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
    figures = run(image, args.clients, model_options=options)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
