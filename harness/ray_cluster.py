"""A real single-node Ray cluster for tests, started the way KubeRay starts a head pod.

``ray start --head`` with free loopback ports and a private temp dir, Serve applications deployed by
PUTting a Serve config to the dashboard's REST API (what the KubeRay operator does with
serveConfigV2), and a teardown that stops exactly the processes of this cluster, found by their
private temp dir, so nothing (raylet, workers, haproxy) outlives the test session.
"""

from __future__ import annotations

import copy
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "serve_config.yaml"
RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all sockets stay bound until every port is chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def load_serve_config(path: Path = SERVE_CONFIG) -> dict:
    return yaml.safe_load(path.read_text())


def serve_env(path: Path = REPO / "serve.env") -> dict[str, str]:
    """The Ray Serve process settings production uses (``serve.env``: KEY=VALUE lines)."""
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """Every live process of the Ray cluster using ``temp_dir``: those whose command line names it,
    and their descendants (workers, replicas, the proxy's haproxy)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


@dataclass
class RayCluster:
    """One head node on 127.0.0.1; use as a context manager or call start()/stop()."""

    num_cpus: int = 2
    env: dict[str, str] = field(default_factory=serve_env)
    # The checkout whose serve_app the cluster runs: its workers import from their working directory
    # first (the raylet's, where `ray start` ran), so both PYTHONPATH and the working directory.
    code_dir: Path = REPO
    serve_port: int = 0  # 0: a free port
    dashboard_port: int = 0  # 0: a free port
    metrics_port: int = 0  # 0: a free port
    gcs_port: int = 0  # 0: a free port
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    # Ray 2.60 protects the dashboard API with a token; KubeRay passes it the same way.
    auth_token: str = field(default_factory=lambda: secrets.token_hex(32))

    def __post_init__(self) -> None:
        # Every port this cluster needs, chosen at once so no two components get the same one.
        ports = iter(free_ports(12))
        for name in ("serve_port", "dashboard_port", "metrics_port", "gcs_port"):
            if not getattr(self, name):
                setattr(self, name, next(ports))
        self._haproxy_ports = [next(ports), next(ports)]
        self._agent_ports = list(ports)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.auth_token}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def process_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            **self.env,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.auth_token,
        }
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
            # Serve's HAProxy uses host-wide defaults (ports 9101/8404, files in /tmp/haproxy-serve):
            # give this cluster its own so clusters side by side (tests, benchmarks) don't collide.
            state = f"{self.temp_dir}/haproxy"
            env.update(
                RAY_SERVE_HAPROXY_METRICS_PORT=str(self._haproxy_ports[0]),
                RAY_SERVE_HAPROXY_STATS_PORT=str(self._haproxy_ports[1]),
                RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=f"{state}/haproxy.cfg",
                RAY_SERVE_HAPROXY_SOCKET_PATH=f"{state}/admin.sock",
                RAY_SERVE_HAPROXY_SERVER_STATE_BASE=state,
                RAY_SERVE_HAPROXY_SERVER_STATE_FILE=f"{state}/server-state",
                RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH=f"{state}/metrics.sock",
            )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.code_dir), env.get("PYTHONPATH")]))
        return env

    def start(self) -> RayCluster:
        cmd = [
            RAY,
            "start",
            "--head",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--metrics-export-port={self.metrics_port}",
            *(
                f"--{flag}={port}"
                for flag, port in zip(
                    (
                        "dashboard-agent-listen-port",
                        "dashboard-agent-grpc-port",
                        "runtime-env-agent-port",
                        "node-manager-port",
                        "object-manager-port",
                        "ray-client-server-port",
                    ),
                    self._agent_ports,
                    strict=False,
                )
            ),  # the agents take the first six
            "--min-worker-port=20000",
            "--max-worker-port=29999",
        ]
        try:
            result = subprocess.run(
                cmd, env=self.process_env(), cwd=self.code_dir, capture_output=True, text=True, timeout=120
            )
            if result.returncode != 0:
                raise RuntimeError(f"ray start failed:\n{result.stdout}\n{result.stderr}")
            self._wait(
                lambda: self.http.get(f"{self.dashboard_url}/api/serve/applications/", timeout=5).ok,
                60,
                "the dashboard's Serve REST API",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def deploy(self, config: dict, timeout_s: float = 180) -> None:
        """PUT a Serve config (serveConfigV2) and wait until every application is RUNNING."""
        config = copy.deepcopy(config)
        config.setdefault("http_options", {}).update(host="127.0.0.1", port=self.serve_port)
        response = self.http.put(f"{self.dashboard_url}/api/serve/applications/", json=config, timeout=30)
        response.raise_for_status()
        names = [app["name"] for app in config["applications"]]
        self._wait(
            lambda: self.app_statuses(names) == {n: "RUNNING" for n in names},
            timeout_s,
            f"applications {names} RUNNING (last: {{last}})",
        )

    def app_statuses(self, names: list[str]) -> dict[str, str]:
        apps = self.http.get(f"{self.dashboard_url}/api/serve/applications/", timeout=10).json()
        apps = apps.get("applications", {})
        statuses = {n: apps.get(n, {}).get("status", "MISSING") for n in names}
        for name, status in statuses.items():
            if status == "DEPLOY_FAILED":
                raise RuntimeError(f"{name} failed to deploy: {apps[name].get('message')}")
        self._last = statuses
        return statuses

    def _wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        self._last = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout_s}s waiting for {what.format(last=self._last)}")

    def processes(self) -> list[psutil.Process]:
        return cluster_processes(self.temp_dir)

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive + self.processes():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
