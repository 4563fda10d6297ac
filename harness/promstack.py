"""Helpers shared by the monitoring tests and scripts: a throwaway Prometheus on 127.0.0.1, the
dashboard's and rules' PromQL with Grafana variables filled in, and a bounded load generator.

Prometheus runs from the binary that scripts/tools/prometheus.sh installs, with a temp data dir and a
free port, and is stopped by its pid; the system service is never touched.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
DASHBOARDS = MONITORING / "dashboards"
RULES = MONITORING / "prometheusrule.yaml"
TOOLS_BIN = REPO / ".tools" / "bin"

# Series that only exist in a Kubernetes cluster: cAdvisor (kubelet), kube-state-metrics, KubeRay operator.
CLUSTER_ONLY_METRICS = re.compile(r"\b(container_[a-z_]+|kube_[a-z_]+|kuberay_[a-z_]+)\b")
# Labels the local scrape adds so that selectors look like they do in a cluster.
LOCAL_LABELS = {
    "namespace": "classifier-test",
    "ray_io_cluster": "local-cluster",
    "pod": "local-cluster-head",
}


def tool(name: str) -> str:
    """Path of a tool from .tools/bin or PATH; raises (so a test fails) when it is missing."""
    found = TOOLS_BIN / name if (TOOLS_BIN / name).exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found in {TOOLS_BIN} or PATH; run scripts/tools/prometheus.sh")
    return str(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rule_groups(eval_interval: str | None = None) -> dict:
    """The PrometheusRule's spec as a plain Prometheus rule file; optionally every group's interval forced."""
    spec = yaml.safe_load(RULES.read_text())["spec"]
    if eval_interval:
        for group in spec["groups"]:
            group["interval"] = eval_interval
    return spec


def dashboard(name: str = "classifier-overview.json") -> dict:
    return json.loads((DASHBOARDS / name).read_text())


def panels(dash: dict):
    """Every non-row panel, including those nested in collapsed rows."""
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def substitute(expr: str, variables: dict[str, str], rate_interval: str = "2m") -> str:
    """Fill Grafana's template variables the way Grafana does for single values."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    expr = expr.replace("$__range", rate_interval)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def is_cluster_only(expr: str) -> bool:
    return bool(CLUSTER_ONLY_METRICS.search(expr))


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*bool\b)?")


def boolify(expr: str) -> str:
    """Turn every comparison outside label matchers and strings into its `bool` form, so an alert's
    expression returns its full input vector (0 = would not fire) instead of only firing series."""
    out, depth, i, quote = [], 0, 0, None
    while i < len(expr):
        ch = expr[i]
        if quote:
            out.append(ch)
            if ch == "\\":
                out.append(expr[i + 1])
                i += 1
            elif ch == quote:
                quote = None
            i += 1
            continue
        if ch in "\"'`":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            m = _COMPARISON.match(expr, i)
            if m and not expr.startswith("=~", i) and not expr.startswith("!~", i):
                out.append(m.group(1) + " bool ")  # an existing `bool` is consumed, not doubled
                i = m.end()
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def launch(owner, command: list[str], timeout_s: float) -> None:
    """Start Prometheus (``command``) for ``owner`` (its ``dir``, ``url`` and ``stop()``), logging to
    dir/prometheus.log, and wait until it is ready; stop it again if it never gets there."""
    owner.log = open(owner.dir / "prometheus.log", "wb")  # noqa: SIM115 - closed in owner.stop()
    owner.proc = subprocess.Popen(command, stdout=owner.log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(owner.proc, owner.url, owner.dir / "prometheus.log", timeout_s)
    except (RuntimeError, TimeoutError):
        owner.stop()
        raise


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    """Until the Prometheus at ``url`` (started as ``proc``, logging to ``log``) answers /-/ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/-/ready", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError("prometheus did not become ready")


@dataclass
class Prometheus:
    """A real Prometheus 2.x on 127.0.0.1 scraping the given targets and evaluating the project's rules."""

    targets: dict[str, list[str]]  # job -> ["127.0.0.1:port", ...]
    scrape_interval: str = "1s"
    rule_interval: str = "2s"
    labels: dict[str, str] = field(default_factory=lambda: dict(LOCAL_LABELS))
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="prom-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> Prometheus:
        (self.dir / "rules.yaml").write_text(yaml.safe_dump(rule_groups(self.rule_interval), sort_keys=False))
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.rule_interval,
                "scrape_timeout": self.scrape_interval,
            },
            "rule_files": [str(self.dir / "rules.yaml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets, "labels": self.labels}]}
                for job, targets in self.targets.items()
            ],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        launch(
            self,
            [
                tool("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--web.enable-lifecycle",
            ],
            timeout_s,
        )
        return self

    def stop(self) -> None:
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

    def __enter__(self) -> Prometheus:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def api(self, path: str, **params) -> dict:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str, default: float | None = None) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else default

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def wait_for(self, expr: str, predicate, timeout_s: float, what: str):
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            last = self.value(expr)
            if last is not None and predicate(last):
                return last
            time.sleep(1)
        raise TimeoutError(f"{what}: {expr} was {last} after {timeout_s}s")


def drive_load(base_url: str, images: list[bytes], rounds: int, bad_every: int = 5) -> dict:
    """Bounded load on 127.0.0.1: `rounds` prediction requests cycling over the images (REST single,
    REST multi-image, OIP v2 BYTES), plus a corrupt image and an unknown route every `bad_every` rounds.
    Returns what was sent, by outcome, for comparison with the metrics."""
    import base64

    sent = {"ok_images": 0, "ok_requests": 0, "invalid_image": 0, "not_found": 0, "statuses": {}}
    with requests.Session() as http:

        def count(response):
            key = str(response.status_code)
            sent["statuses"][key] = sent["statuses"].get(key, 0) + 1
            return response

        for i in range(rounds):
            img = images[i % len(images)]
            kind = i % 3
            if kind == 0:
                r = count(
                    http.post(
                        f"{base_url}/predict", data=img, headers={"content-type": "image/png"}, timeout=60
                    )
                )
                n = 1
            elif kind == 1:
                files = [
                    ("file", (f"{j}.img", images[(i + j) % len(images)], "application/octet-stream"))
                    for j in range(2)
                ]
                r = count(http.post(f"{base_url}/predict", files=files, timeout=60))
                n = 2
            else:
                body = {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1],
                            "datatype": "BYTES",
                            "data": [base64.b64encode(img).decode()],
                        }
                    ]
                }
                r = count(http.post(f"{base_url}/v2/models/mobilenet_v2/infer", json=body, timeout=60))
                n = 1
            r.raise_for_status()
            sent["ok_images"] += n
            sent["ok_requests"] += 1
            if i % bad_every == 0:
                r = count(
                    http.post(
                        f"{base_url}/predict",
                        data=b"not an image",
                        headers={"content-type": "image/png"},
                        timeout=30,
                    )
                )
                assert r.status_code == 400, r.text
                sent["invalid_image"] += 1
                r = count(http.get(f"{base_url}/no-such-route", timeout=30))
                assert r.status_code == 404, r.text
                sent["not_found"] += 1
    return sent
