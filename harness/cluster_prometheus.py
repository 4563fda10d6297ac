"""Debian's Prometheus scraping the test cluster's pods with the selection the repo's PodMonitors declare.

No prometheus-operator runs on the test cluster (its image cannot be pulled here), so this module does
what the operator does with a PodMonitor: `scrape_configs()` turns each `podMetricsEndpoints` entry into
a job whose relabelling keeps the pods that the PodMonitor's label selector matches, on the container
port of that name, and then applies the PodMonitor's own relabelings. Debian's Prometheus 2.42 is built
without Kubernetes service discovery, so `pod_targets()` does the `role: pod` discovery itself: every
declared container port of every pod becomes a target with the same `__meta_kubernetes_pod_*` labels,
written to a file_sd file that a thread refreshes every 2 s. `ClusterPrometheus` runs Prometheus inside
the node's network namespace (pod addresses are unreachable from the host by design), listening on the
node's address, with the PrometheusRule's groups as its rule file; it is started and stopped by its pid.

    # scrape namespace NS of the running test cluster until Ctrl-C
    python -m harness.cluster_prometheus --namespace NS
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

from harness.promstack import MONITORING, REPO, launch, rule_groups, tool

PODMONITORS = sorted(MONITORING.glob("podmonitor-*.yaml"))
CLUSTER_ENV = REPO / "cluster" / "cluster.env"
KUBECONFIG = REPO / ".cluster" / "kubeconfig"


def podmonitors() -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in PODMONITORS]


def _label(name: str) -> str:
    """A Kubernetes label name as Prometheus' service discovery spells it in meta labels."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def selector_relabelings(selector: dict) -> list[dict]:
    """Keep/drop rules equivalent to a Kubernetes label selector (matchLabels + matchExpressions)."""
    rules = []
    for key, value in (selector.get("matchLabels") or {}).items():
        rules.append(
            {
                "action": "keep",
                "source_labels": [
                    f"__meta_kubernetes_pod_label_{_label(key)}",
                    f"__meta_kubernetes_pod_labelpresent_{_label(key)}",
                ],
                "regex": f"({re.escape(str(value))});true",
            }
        )
    for expr in selector.get("matchExpressions") or []:
        key, op, values = (
            _label(expr["key"]),
            expr["operator"],
            [re.escape(str(v)) for v in expr.get("values") or []],
        )
        present = f"__meta_kubernetes_pod_labelpresent_{key}"
        if op == "Exists":
            rules.append({"action": "keep", "source_labels": [present], "regex": "true"})
        elif op == "DoesNotExist":
            rules.append({"action": "drop", "source_labels": [present], "regex": "true"})
        elif op == "In":
            rules.append(
                {
                    "action": "keep",
                    "source_labels": [f"__meta_kubernetes_pod_label_{key}", present],
                    "regex": f"({'|'.join(values)});true",
                }
            )
        elif op == "NotIn":
            rules.append(
                {
                    "action": "drop",
                    "source_labels": [f"__meta_kubernetes_pod_label_{key}", present],
                    "regex": f"({'|'.join(values)});true",
                }
            )
        else:
            raise ValueError(f"unknown label selector operator {op!r}")
    return rules


def _snake(relabeling: dict) -> dict:
    """A PodMonitor relabeling (camelCase, as the CRD spells it) in Prometheus' own spelling."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    rule = {names.get(k, k): v for k, v in relabeling.items()}
    if "action" in rule:
        rule["action"] = rule["action"].lower()
    return rule


def pod_targets(pods: list[dict]) -> list[dict]:
    """Kubernetes `role: pod` discovery for file_sd: one target per declared container port of each pod
    that has an address, labelled as Prometheus' Kubernetes discovery labels it."""
    groups = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        if not status.get("podIP"):
            continue
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        common = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_ip": status["podIP"],
            "__meta_kubernetes_pod_phase": status.get("phase", ""),
            "__meta_kubernetes_pod_ready": str(ready).lower(),
            "__meta_kubernetes_pod_node_name": pod["spec"].get("nodeName", ""),
        }
        for key, value in (meta.get("labels") or {}).items():
            common[f"__meta_kubernetes_pod_label_{_label(key)}"] = value
            common[f"__meta_kubernetes_pod_labelpresent_{_label(key)}"] = "true"
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                if port.get("protocol", "TCP") != "TCP":
                    continue
                groups.append(
                    {
                        "targets": [f"{status['podIP']}:{port['containerPort']}"],
                        "labels": {
                            **common,
                            "__meta_kubernetes_pod_container_name": container["name"],
                            "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                            "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                        },
                    }
                )
    return groups


def scrape_configs(monitors: list[dict], targets_file: str, interval: str = "5s") -> list[dict]:
    """One scrape job per PodMonitor endpoint, as prometheus-operator generates it: pods of the given
    namespaces that the selector matches and that are not finished, the named container port, the
    target labels namespace/pod/container/endpoint and job=<namespace>/<podmonitor>, then the
    PodMonitor's relabelings (which may override job)."""
    jobs = []
    for monitor in monitors:
        spec, name = monitor["spec"], monitor["metadata"]["name"]
        for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
            relabel = [
                {
                    "action": "drop",
                    "source_labels": ["__meta_kubernetes_pod_phase"],
                    "regex": "(Failed|Succeeded)",
                }
            ]
            relabel += selector_relabelings(spec.get("selector") or {})
            relabel.append(
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": re.escape(endpoint["port"]),
                }
            )
            relabel += [
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"target_label": "endpoint", "replacement": endpoint["port"]},
                {
                    "source_labels": ["__meta_kubernetes_namespace"],
                    "target_label": "job",
                    "replacement": f"$1/{name}",
                },
            ]
            relabel += [_snake(r) for r in endpoint.get("relabelings") or []]
            jobs.append(
                {
                    "job_name": f"podMonitor/{name}/{index}",
                    "scrape_interval": endpoint.get("interval", interval),
                    "scrape_timeout": endpoint.get("scrapeTimeout", interval),
                    "metrics_path": endpoint.get("path", "/metrics"),
                    "file_sd_configs": [{"files": [targets_file], "refresh_interval": "5s"}],
                    "relabel_configs": relabel,
                }
            )
    return jobs


def cluster_env() -> dict[str, str]:
    values = {}
    for line in CLUSTER_ENV.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


class ClusterPrometheus:
    """Prometheus in the node's network namespace, scraping ``namespaces`` through the PodMonitors."""

    def __init__(
        self, namespaces: list[str], port: int = 9090, interval: str = "5s", rule_interval: str = "5s"
    ):
        env = cluster_env()
        self.netns, self.host = env["NETNS"], env["NODE_IP"]
        self.namespaces, self.port, self.interval, self.rule_interval = (
            namespaces,
            port,
            interval,
            rule_interval,
        )
        self.dir = Path(tempfile.mkdtemp(prefix="cluster-prom-"))
        self.proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._discovery: threading.Thread | None = None

    def discover(self) -> None:
        """Write the namespaces' pods as file_sd targets (atomically: Prometheus watches the file)."""
        pods = []
        for ns in self.namespaces:
            proc = subprocess.run(
                [str(REPO / ".cluster" / "bin" / "kubectl"), "get", "pods", "-n", ns, "-o", "json"],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "KUBECONFIG": os.environ.get("KUBECONFIG", str(KUBECONFIG))},
            )
            if proc.returncode == 0:
                pods += yaml.safe_load(proc.stdout)["items"]
        tmp = self.dir / "targets.json.tmp"
        tmp.write_text(json.dumps(pod_targets(pods)))
        tmp.rename(self.dir / "targets.json")

    def _discover_loop(self) -> None:
        while not self._stop.wait(2):
            try:
                self.discover()
            except (subprocess.SubprocessError, OSError, ValueError) as exc:
                print(f"cluster_prometheus: discovery failed: {exc}", file=sys.stderr)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict:
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.rule_interval},
            "rule_files": [str(self.dir / "rules.yaml")],
            "scrape_configs": scrape_configs(podmonitors(), str(self.dir / "targets.json"), self.interval),
        }

    def start(self, timeout_s: float = 60) -> ClusterPrometheus:
        (self.dir / "rules.yaml").write_text(yaml.safe_dump(rule_groups(self.rule_interval), sort_keys=False))
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.discover()
        self._discovery = threading.Thread(target=self._discover_loop, daemon=True)
        self._discovery.start()
        # `ip netns exec` execs Prometheus in place: the pid is Prometheus' own.
        launch(
            self,
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                tool("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            timeout_s,
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._discovery:
            self._discovery.join(35)
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ClusterPrometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def query(self, expr: str) -> list[dict]:
        r = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def active_targets(self) -> list[dict]:
        r = requests.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=30)
        r.raise_for_status()
        return r.json()["data"]["activeTargets"]

    def rules(self) -> list[dict]:
        r = requests.get(f"{self.url}/api/v1/rules", timeout=30)
        r.raise_for_status()
        return [rule for group in r.json()["data"]["groups"] for rule in group["rules"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--namespace", action="append", required=True, help="namespace to scrape (repeatable)"
    )
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--print-config", action="store_true", help="print the generated config and exit")
    args = parser.parse_args()
    prom = ClusterPrometheus(args.namespace, port=args.port)
    if args.print_config:
        print(yaml.safe_dump(prom.config(), sort_keys=False))
        shutil.rmtree(prom.dir, ignore_errors=True)
        return 0
    if os.geteuid() != 0:
        parser.error("entering the node's network namespace needs root")
    with prom:
        print(f"Prometheus on {prom.url} scraping {args.namespace}; Ctrl-C stops it", flush=True)
        try:
            while prom.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
